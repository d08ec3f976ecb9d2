#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]
//! The kernel table is the truth: every table name is an entry of its module's PTX and vice
//! versa (the host launchers are checked by the linker), and the shim's execution model works.
use clca::kernels::{Arg, Launch, KERNELS, MODULES};
use clca::{Device, HostShim};
use std::collections::BTreeSet;

#[test]
fn table_matches_ptx_entries() {
    for (module, ptx) in MODULES {
        let entries: BTreeSet<&str> = ptx
            .lines()
            .filter_map(|l| l.trim().strip_prefix(".visible .entry "))
            .map(|l| l.split('(').next().unwrap_or_default().trim())
            .collect();
        let table: BTreeSet<&str> = KERNELS
            .iter()
            .filter(|(m, _)| m == module)
            .map(|(_, k)| *k)
            .collect();
        assert_eq!(
            entries, table,
            "module {module}: PTX entries vs kernels/kernels.txt"
        );
        assert!(
            ptx.contains(".target sm_80"),
            "{module}: PTX must target sm_80 (one low virtual arch)"
        );
    }
    eprintln!(
        "{} kernels in {} modules; PTX from {}",
        KERNELS.len(),
        MODULES.len(),
        clca::kernels::ptx::PTX_SOURCE
    );
}

#[test]
fn unknown_kernels_and_bad_geometry_are_errors() {
    assert!(matches!(
        Launch::new(
            "topk",
            "nope",
            clca::DType::F32,
            [1, 1, 1],
            [32, 1, 1],
            vec![]
        ),
        Err(clca::Error::UnknownKernel(_))
    ));
    assert!(Launch::new(
        "topk",
        "topk_select",
        clca::DType::F32,
        [1, 1, 1],
        [2048, 1, 1],
        vec![]
    )
    .is_err());
    assert!(Launch::new(
        "topk",
        "topk_select",
        clca::DType::F32,
        [1, 70_000, 1],
        [32, 1, 1],
        vec![]
    )
    .is_err());
    assert!(Launch::new(
        "topk",
        "topk_select",
        clca::DType::F32,
        [0, 1, 1],
        [32, 1, 1],
        vec![]
    )
    .is_err());
}

#[test]
fn shim_collectives() {
    let dev = HostShim;
    for n in [32usize, 64, 256, 1024] {
        let input: Vec<f32> = (0..n)
            .map(|i| {
                if i % 3 == 0 {
                    -(i as f32)
                } else {
                    i as f32 * 0.5
                }
            })
            .collect();
        let x = dev.upload(&input).expect("upload");
        let mut out = dev.upload(&vec![f32::NAN; 6 * n]).expect("upload");
        let l = Launch::new(
            "selftest",
            "selftest_collectives",
            clca::DType::F32,
            [1, 1, 1],
            [n as u32, 1, 1],
            vec![
                Arg::Ptr(x.0.as_ptr() as u64),
                Arg::U32(n as u32),
                Arg::Ptr(out.0.as_mut_ptr() as u64),
            ],
        )
        .expect("launch");
        // SAFETY: x holds n and out 6n f32, what the kernel touches with n threads.
        unsafe { dev.launch(&l) }.expect("selftest kernel");
        let o = &out.0;
        let total: f32 = input.iter().sum();
        let mut positives_before = 0u32;
        for t in 0..n {
            let w = t / 32;
            let warp_sum: f32 = input[w * 32..w * 32 + 32].iter().sum();
            assert!(
                (o[t] - warp_sum).abs() <= 1e-3 * warp_sum.abs().max(1.0),
                "warp_sum at {t}"
            );
            let down = if t % 32 == 31 { input[t] } else { input[t + 1] };
            assert_eq!(o[n + t], down, "shfl_down at {t}");
            let ballot = input[w * 32..w * 32 + 32]
                .iter()
                .filter(|&&v| v > 0.0)
                .count() as f32;
            assert_eq!(o[2 * n + t], ballot, "ballot at {t}");
            assert!(
                (o[3 * n + t] - total).abs() <= 1e-3 * total.abs().max(1.0),
                "block_sum at {t}"
            );
            assert_eq!(
                o[4 * n + t],
                positives_before as f32,
                "exclusive scan at {t}"
            );
            positives_before += (input[t] > 0.0) as u32;
            assert_eq!(o[5 * n + t], 0.0, "atomic count == scan total at {t}");
        }
    }
}

#[test]
fn shim_reports_a_partial_barrier() {
    let dev = HostShim;
    let x = dev.upload(&[1f32; 64]).expect("upload");
    let mut out = dev.upload(&[0f32; 64]).expect("upload");
    for (live, ok) in [(64u32, true), (40, false), (0, true)] {
        let l = Launch::new(
            "selftest",
            "selftest_partial_barrier",
            clca::DType::F32,
            [2, 1, 1],
            [64, 1, 1],
            vec![
                Arg::Ptr(x.0.as_ptr() as u64),
                Arg::U32(live),
                Arg::Ptr(out.0.as_mut_ptr() as u64),
            ],
        )
        .expect("launch");
        // SAFETY: 64 threads touch at most 64 elements of x and out.
        let r = unsafe { dev.launch(&l) };
        match (ok, r) {
            (true, Ok(())) => {}
            (false, Err(clca::Error::HostShim { message, .. })) => {
                assert!(
                    message.contains("__syncthreads reached by only 40 of 64"),
                    "{message}"
                );
            }
            (ok, r) => panic!("live {live}: expected ok = {ok}, got {r:?}"),
        }
    }
}
