//! Element-wise passes compiled for the widest vectors of this CPU.
//!
//! [`widest!`] turns an `#[inline(always)]` body into a function that runs it compiled for
//! AVX-512F or AVX2 + FMA, whichever [`crate::cpu::packed::detect`] reported, and as built
//! elsewhere. It is for bodies whose operations are lane-wise and never contracted into FMAs
//! (Rust does not contract), so every width gives the same bits: LayerNorm rows, GELU, the
//! soft merge's weighted sums, ToMe's match.

/// `widest!(/// doc  vis fn name(a: A, b: B) => body);` defines `vis fn name(wide: Option<Isa>,
/// a: A, b: B)`, which calls `body(a, b)` compiled for `wide`. Callers pass
/// [`crate::cpu::packed::detect`]'s answer, taken once outside their loops; any other value
/// than what `detect` gives this CPU is a bug (the unsafe call relies on it).
macro_rules! widest {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) => $body:path) => {
        $(#[$m])*
        $vis fn $name(wide: Option<$crate::cpu::packed::Isa>, $($a: $t),*) {
            /// # Safety
            /// The CPU has AVX-512F.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($a: $t),*) {
                $body($($a),*)
            }
            /// # Safety
            /// The CPU has AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($a: $t),*) {
                $body($($a),*)
            }
            match wide {
                // SAFETY: `wide` is what `detect` reported for this CPU (the caller's contract).
                #[cfg(target_arch = "x86_64")]
                Some($crate::cpu::packed::Isa::Avx512) => unsafe { avx512($($a),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Some($crate::cpu::packed::Isa::Avx2) => unsafe { avx2($($a),*) },
                _ => $body($($a),*),
            }
        }
    };
}
pub(crate) use widest;
