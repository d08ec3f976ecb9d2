//! Build script: kernels/*.cu → PTX (NVRTC when present, else the committed ptx/), the same
//! sources → a host static library under the execution shim, and the kernel table → Rust.
//!
//! It probes no hardware and no network and writes only to OUT_DIR. Inputs it reads:
//!   - kernels/* and ptx/* (rerun-if-changed on each file);
//!   - CLCA_NVRTC: path to libnvrtc.so (or `off`); default
//!     `.toolchain/cuda/nvidia/cuda_nvrtc/lib/libnvrtc.so.12` (where scripts/toolchain.sh puts
//!     the pinned PyPI wheel);
//!   - CLCA_PTX_CHECK=1: fail when the freshly compiled PTX differs from the committed ptx/.
use std::collections::BTreeMap;
use std::env;
use std::ffi::{c_char, c_int, CString};
use std::fs;
use std::path::{Path, PathBuf};

struct Table {
    dtypes: Vec<String>,
    modules: BTreeMap<String, Vec<String>>, // module -> ops
}

fn parse_table(text: &str) -> Table {
    let mut dtypes = Vec::new();
    let mut modules = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let head = words.next().unwrap_or_default().to_string();
        let rest: Vec<String> = words.map(str::to_string).collect();
        if head == "dtypes" {
            dtypes = rest;
        } else {
            modules.insert(head, rest);
        }
    }
    Table { dtypes, modules }
}

type NvrtcResult = c_int;
type Prog = *mut std::ffi::c_void;

struct Nvrtc {
    _lib: libloading::Library,
    create: unsafe extern "C" fn(
        *mut Prog,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> NvrtcResult,
    compile: unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> NvrtcResult,
    log_size: unsafe extern "C" fn(Prog, *mut usize) -> NvrtcResult,
    log: unsafe extern "C" fn(Prog, *mut c_char) -> NvrtcResult,
    ptx_size: unsafe extern "C" fn(Prog, *mut usize) -> NvrtcResult,
    ptx: unsafe extern "C" fn(Prog, *mut c_char) -> NvrtcResult,
    destroy: unsafe extern "C" fn(*mut Prog) -> NvrtcResult,
}

impl Nvrtc {
    fn load(path: &Path) -> Result<Self, String> {
        // SAFETY: loading NVRTC runs its initializers only; the symbols are looked up with the
        // signatures of nvrtc.h (CUDA 12), which are stable across 12.x.
        unsafe {
            let lib = libloading::Library::new(path).map_err(|e| e.to_string())?;
            macro_rules! sym {
                ($n:literal) => {
                    *lib.get($n).map_err(|e| e.to_string())?
                };
            }
            Ok(Nvrtc {
                create: sym!(b"nvrtcCreateProgram\0"),
                compile: sym!(b"nvrtcCompileProgram\0"),
                log_size: sym!(b"nvrtcGetProgramLogSize\0"),
                log: sym!(b"nvrtcGetProgramLog\0"),
                ptx_size: sym!(b"nvrtcGetPTXSize\0"),
                ptx: sym!(b"nvrtcGetPTX\0"),
                destroy: sym!(b"nvrtcDestroyProgram\0"),
                _lib: lib,
            })
        }
    }

    fn compile(
        &self,
        name: &str,
        src: &str,
        headers: &[(String, String)],
        flags: &[String],
    ) -> Result<String, String> {
        let c = |s: &str| CString::new(s).map_err(|e| e.to_string());
        let csrc = c(src)?;
        let cname = c(name)?;
        let hdr_src: Vec<CString> = headers
            .iter()
            .map(|(_, s)| c(s))
            .collect::<Result<_, _>>()?;
        let hdr_name: Vec<CString> = headers
            .iter()
            .map(|(n, _)| c(n))
            .collect::<Result<_, _>>()?;
        let hdr_src_p: Vec<*const c_char> = hdr_src.iter().map(|s| s.as_ptr()).collect();
        let hdr_name_p: Vec<*const c_char> = hdr_name.iter().map(|s| s.as_ptr()).collect();
        let cflags: Vec<CString> = flags.iter().map(|s| c(s)).collect::<Result<_, _>>()?;
        let cflags_p: Vec<*const c_char> = cflags.iter().map(|s| s.as_ptr()).collect();
        // SAFETY: every pointer passed below outlives the calls; buffers are sized by NVRTC's
        // own size queries.
        unsafe {
            let mut prog: Prog = std::ptr::null_mut();
            let r = (self.create)(
                &mut prog,
                csrc.as_ptr(),
                cname.as_ptr(),
                headers.len() as c_int,
                hdr_src_p.as_ptr(),
                hdr_name_p.as_ptr(),
            );
            if r != 0 {
                return Err(format!("nvrtcCreateProgram({name}) returned {r}"));
            }
            let rc = (self.compile)(prog, cflags_p.len() as c_int, cflags_p.as_ptr());
            let mut n = 0usize;
            (self.log_size)(prog, &mut n);
            let mut log = vec![0u8; n.max(1)];
            (self.log)(prog, log.as_mut_ptr() as *mut c_char);
            let log = String::from_utf8_lossy(&log)
                .trim_end_matches('\0')
                .to_string();
            if rc != 0 {
                (self.destroy)(&mut prog);
                return Err(format!("NVRTC failed on {name} ({rc}):\n{log}"));
            }
            let mut n = 0usize;
            (self.ptx_size)(prog, &mut n);
            let mut ptx = vec![0u8; n];
            (self.ptx)(prog, ptx.as_mut_ptr() as *mut c_char);
            (self.destroy)(&mut prog);
            while ptx.last() == Some(&0) {
                ptx.pop();
            }
            String::from_utf8(ptx).map_err(|e| e.to_string())
        }
    }
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let kdir = manifest.join("kernels");
    let pdir = manifest.join("ptx");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=ptx");
    println!("cargo:rerun-if-env-changed=CLCA_NVRTC");
    println!("cargo:rerun-if-env-changed=CLCA_PTX_CHECK");

    let table_text = fs::read_to_string(kdir.join("kernels.txt")).expect("kernels/kernels.txt");
    let table = parse_table(&table_text);
    let mut headers = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(&kdir)
        .expect("kernels/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in &entries {
        println!("cargo:rerun-if-changed={}", p.display());
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if name.ends_with(".cuh") || name.ends_with(".h") {
            headers.push((name, fs::read_to_string(p).expect("header")));
        }
    }
    for m in table.modules.keys() {
        println!(
            "cargo:rerun-if-changed={}",
            pdir.join(format!("{m}.ptx")).display()
        );
    }

    // --- PTX ---------------------------------------------------------------------------------
    let flags: Vec<String> = fs::read_to_string(kdir.join("nvrtc.flags"))
        .expect("kernels/nvrtc.flags")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let nvrtc_path = match env::var("CLCA_NVRTC") {
        Ok(v) if v == "off" || v == "0" => None,
        Ok(v) => Some(PathBuf::from(v)),
        Err(_) => {
            let p = manifest.join(".toolchain/cuda/nvidia/cuda_nvrtc/lib/libnvrtc.so.12");
            p.exists().then_some(p)
        }
    };
    if let Some(p) = &nvrtc_path {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let check = env::var("CLCA_PTX_CHECK")
        .map(|v| v == "1")
        .unwrap_or(false);
    let nvrtc = nvrtc_path.as_ref().map(|p| {
        Nvrtc::load(p)
            .unwrap_or_else(|e| panic!("CLCA_NVRTC / toolchain NVRTC at {}: {e}", p.display()))
    });
    if check && nvrtc.is_none() {
        panic!("CLCA_PTX_CHECK=1 needs NVRTC (run scripts/toolchain.sh or set CLCA_NVRTC)");
    }
    let ptx_out = out.join("ptx");
    fs::create_dir_all(&ptx_out).expect("OUT_DIR/ptx");
    let mut ptx_rs = String::from("// @generated by build.rs\n");
    let source = if nvrtc.is_some() {
        "nvrtc"
    } else {
        "committed"
    };
    ptx_rs.push_str(&format!("/// Where the embedded PTX came from: `nvrtc` (compiled now) or `committed` (ptx/).\npub const PTX_SOURCE: &str = \"{source}\";\n"));
    let mut stale = Vec::new();
    for m in table.modules.keys() {
        let committed = pdir.join(format!("{m}.ptx"));
        let text = match &nvrtc {
            Some(nv) => {
                let src = fs::read_to_string(kdir.join(format!("{m}.cu"))).expect("kernel source");
                let ptx = nv
                    .compile(&format!("{m}.cu"), &src, &headers, &flags)
                    .unwrap_or_else(|e| panic!("{e}"));
                if check && fs::read_to_string(&committed).ok().as_deref() != Some(ptx.as_str()) {
                    stale.push(m.clone());
                }
                ptx
            }
            None => fs::read_to_string(&committed).unwrap_or_else(|_| {
                panic!(
                    "{} is missing and NVRTC is not available",
                    committed.display()
                )
            }),
        };
        let dst = ptx_out.join(format!("{m}.ptx"));
        fs::write(&dst, &text).expect("write ptx");
        ptx_rs.push_str(&format!(
            "pub const {}: &str = include_str!({:?});\n",
            m.to_uppercase(),
            dst.display().to_string()
        ));
    }
    if !stale.is_empty() {
        panic!(
            "ptx/ is stale for {:?}: run `python3 scripts/ptx.py --write` and commit ptx/",
            stale
        );
    }

    // --- kernel table → Rust ----------------------------------------------------------------
    let mut rs = String::from("// @generated by build.rs from kernels/kernels.txt\n");
    rs.push_str(
        "/// Every kernel: (module, entry name).\npub const KERNELS: &[(&str, &str)] = &[\n",
    );
    let mut names = Vec::new();
    for (m, ops) in &table.modules {
        for op in ops {
            let (op, dts): (&str, Vec<String>) = match op.split_once(':') {
                Some((o, d)) => (o, d.split(',').map(str::to_string).collect()),
                None => (op.as_str(), table.dtypes.clone()),
            };
            for dt in &dts {
                let n = format!("{op}_{dt}");
                rs.push_str(&format!("    ({m:?}, {n:?}),\n"));
                names.push(n);
            }
        }
    }
    rs.push_str(
        "];\n/// Every module with its PTX text.\npub const MODULES: &[(&str, &str)] = &[\n",
    );
    for m in table.modules.keys() {
        rs.push_str(&format!(
            "    ({m:?}, crate::kernels::ptx::{}),\n",
            m.to_uppercase()
        ));
    }
    rs.push_str("];\n");
    rs.push_str("pub(crate) type HostLaunchFn = unsafe extern \"C\" fn(*const LaunchCfg, *mut *mut ::std::ffi::c_void) -> i32;\n");
    rs.push_str("extern \"C\" {\n");
    for n in &names {
        rs.push_str(&format!(
            "    fn clca_host_launch__{n}(cfg: *const LaunchCfg, args: *mut *mut ::std::ffi::c_void) -> i32;\n"
        ));
    }
    rs.push_str("}\n/// The host-shim launcher of a kernel, by entry name.\npub(crate) fn host_launcher(name: &str) -> Option<HostLaunchFn> {\n    match name {\n");
    for n in &names {
        rs.push_str(&format!("        {n:?} => Some(clca_host_launch__{n}),\n"));
    }
    rs.push_str("        _ => None,\n    }\n}\n");
    fs::write(out.join("kernel_table.rs"), rs).expect("kernel_table.rs");
    fs::write(out.join("ptx.rs"), ptx_rs).expect("ptx.rs");

    // --- host shim library ------------------------------------------------------------------
    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++17")
        .include(&kdir)
        .opt_level(2)
        .warnings(true)
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-unused-function")
        // Round every product and sum as written (as Rust does): no FMA contraction on hosts
        // whose base ISA has FMA (aarch64), so the shim matches the CPU references bit for bit.
        .flag_if_supported("-ffp-contract=off")
        .file(kdir.join("host_shim.cpp"));
    for m in table.modules.keys() {
        // Compiled as C++ under the shim; a copy with a .cpp name keeps every compiler happy.
        let src = kdir.join(format!("{m}.cu"));
        let dst = out.join(format!("host_{m}.cpp"));
        let text = fs::read_to_string(&src).expect("kernel source");
        fs::write(&dst, format!("#line 1 \"{}\"\n{text}", src.display())).expect("write host copy");
        b.file(dst);
    }
    b.compile("clca_host_kernels");
}
