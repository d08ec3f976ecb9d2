/* The machine's f32 FMA peak, the roof every f32 forward sits under: each OpenMP thread runs
 * 12 independent FMA chains (enough to cover 4 cycles of latency on 2 pipes) on registers
 * only, no memory traffic. Built and run by cpu_compare.py:
 *
 *     gcc -O2 -fopenmp -mavx512f       -DWIDTH=512 fma_peak.c -o fma_peak   # AVX-512 path
 *     gcc -O2 -fopenmp -mavx2 -mfma    -DWIDTH=256 fma_peak.c -o fma_peak   # AVX2 path
 *     OMP_NUM_THREADS=2 ./fma_peak     # prints the best of 5 rounds in GFLOP/s
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>

#if WIDTH == 512
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define STORE _mm512_storeu_ps
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define STORE _mm256_storeu_ps
#endif

#define CHAINS 12
#define STEPS 50000000L

int main(void) {
    double best = 0.0;
    float sink = 0.0f;
    for (int round = 0; round < 5; round++) {
        double t = omp_get_wtime();
#pragma omp parallel reduction(+ : sink)
        {
            vec a[CHAINS];
            for (int i = 0; i < CHAINS; i++) a[i] = SET1(0.001f * (float)i);
            const vec m = SET1(0.999999f), c = SET1(1e-7f);
            for (long s = 0; s < STEPS; s++) {
#pragma GCC unroll 12
                for (int i = 0; i < CHAINS; i++) a[i] = FMA(a[i], m, c);
            }
            vec sum = a[0];
            for (int i = 1; i < CHAINS; i++) sum = ADD(sum, a[i]);
            float out[LANES];
            STORE(out, sum);
            for (int l = 0; l < LANES; l++) sink += out[l];
        }
        t = omp_get_wtime() - t;
        double gflops = 2.0 * LANES * CHAINS * STEPS * omp_get_max_threads() / t / 1e9;
        if (gflops > best) best = gflops;
    }
    /* The sum keeps the chains live; it is printed to stderr so stdout is one number. */
    fprintf(stderr, "checksum %g\n", (double)sink);
    printf("%.1f\n", best);
    return 0;
}
