use clca::{ops, Device, HostShim};
#[test]
fn topk_smoke() {
    let dev = HostShim;
    let x: Vec<f32> = vec![0.5, 3.0, -1.0, 3.0, 2.0, f32::NAN, -0.0, 0.0];
    let xb = dev.upload(&x).unwrap();
    let mut idx = dev.zeros::<u32>(3).unwrap();
    let mut compl = dev.zeros::<u32>(5).unwrap();
    ops::topk::topk_select(&dev, &xb, 1, 8, 3, &mut idx, &mut compl).unwrap();
    assert_eq!(dev.download(&idx).unwrap(), vec![5, 1, 3]);
    assert_eq!(dev.download(&compl).unwrap(), vec![0, 2, 4, 6, 7]);
}
