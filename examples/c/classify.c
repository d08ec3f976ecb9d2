/*
 * The C ABI end to end (scripts/c_example.sh builds and runs it; CI runs it on the CPU):
 * a model from a checkpoint or from seeded random weights, its plan (tokens and MACs per
 * block), the workspace an engine would pass, a forward on a deterministic image with the
 * top-5 classes, one op on raw pointers, and the error paths.
 *
 *   classify                              random weights, the default configuration below
 *   classify W.safetensors ["FLAGS"]      a checkpoint in the authors' names, train.py flags
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "clca.h"

/* EViT + CLCA on ViT-Tiny/16 at 224 px: small enough for a quick CPU run. The paper's model is
 * "--model evit_vit_base_patch16_clip_224.laion2b --input-size 448 --reduction_loc 3 6 9
 *  --keep_rate 0.1 --clc --num_clr 1 --ifa_head". */
static const char *DEFAULT_FLAGS =
    "--model evit_vit_tiny_patch16_224 --input-size 224 --reduction_loc 3 6 9 --keep_rate 0.5 "
    "--clc --num_clr 1 --ifa_head --num_classes 200";

#define CHECK(call)                                                                      \
    do {                                                                                 \
        int rc_ = (call);                                                                \
        if (rc_ != CLCA_STATUS_OK) {                                                     \
            fprintf(stderr, "%s failed: %s: %s\n", #call, clca_status_name(rc_),         \
                    clca_last_error_message());                                          \
            return 1;                                                                    \
        }                                                                                \
    } while (0)

/* An error we provoke on purpose: it must fail with `want` and say something. */
static int expect_error(const char *what, int rc, int want) {
    const char *msg = clca_last_error_message();
    printf("  %-34s -> %s: %s\n", what, clca_status_name(rc), msg);
    if (rc != want || msg[0] == '\0') {
        fprintf(stderr, "expected %s with a message\n", clca_status_name(want));
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *flags = argc > 2 ? argv[2] : DEFAULT_FLAGS;
    printf("clca %s, C ABI %u (header %d)\n", clca_version(), clca_abi_version(),
           CLCA_ABI_VERSION);
    if (clca_abi_version() != CLCA_ABI_VERSION) {
        fprintf(stderr, "the library's ABI does not match this header\n");
        return 1;
    }

    ClcaModel *model = NULL;
    if (argc > 1) {
        printf("model: %s with %s\n", argv[1], flags);
        CHECK(clca_model_create(argv[1], flags, CLCA_BACKEND_CPU, CLCA_DTYPE_F32, 0, &model));
    } else {
        printf("model: random weights (seed 42) with %s\n", flags);
        CHECK(clca_model_create_random(flags, 42, CLCA_BACKEND_CPU, CLCA_DTYPE_F32, 0, &model));
    }

    ClcaModelInfo info;
    CHECK(clca_model_info(model, &info));
    printf("input [B, %zu, %zu, %zu], %zu classes, depth %zu, %zu reduction blocks\n",
           info.in_chans, info.img_size, info.img_size, info.num_classes, info.depth,
           info.num_reduction_blocks);

    size_t depth = 0;
    CHECK(clca_model_blocks(model, NULL, 0, &depth));
    ClcaBlockInfo *blocks = calloc(depth, sizeof *blocks);
    if (!blocks) return 1;
    CHECK(clca_model_blocks(model, blocks, depth, &depth));
    printf("block  tokens in -> out (+cache) -> next   GMACs (unreduced)\n");
    for (size_t i = 0; i < depth; i++) {
        const ClcaBlockInfo *b = &blocks[i];
        printf("%5zu  %9zu -> %3zu (+%zu) -> %4zu   %.3f (%.3f)%s%s\n", i, b->len_in, b->len_out,
               b->recovered, b->len_after, b->macs / 1e9, b->macs_unreduced / 1e9,
               b->reduces ? "  reduces" : "", b->cls_tap ? "  cls tap" : "");
    }
    printf("backbone %.3f GMACs vs %.3f unreduced (%.1f%%); with the head %.3f\n",
           info.macs_backbone / 1e9, info.macs_unreduced / 1e9,
           100.0 * (double)info.macs_backbone / (double)info.macs_unreduced, info.macs / 1e9);
    free(blocks);

    size_t ws = 0;
    CHECK(clca_model_workspace_size(model, 8, &ws));
    printf("an engine passes %.2f MiB of device workspace for a batch of 8\n", ws / 1048576.0);

    /* One deterministic image, already normalized: a smooth pattern per channel. */
    size_t s = info.img_size, n_img = info.in_chans * s * s, k = info.num_classes;
    float *image = malloc(n_img * sizeof *image), *logits = malloc(k * sizeof *logits);
    if (!image || !logits) return 1;
    for (size_t c = 0; c < info.in_chans; c++)
        for (size_t y = 0; y < s; y++)
            for (size_t x = 0; x < s; x++)
                image[(c * s + y) * s + x] = sinf(0.05f * (float)(x + 2 * y) + (float)c);
    CHECK(clca_model_forward(model, image, n_img, 1, logits, k));

    /* Top-5 with softmax probabilities. */
    float mx = logits[0], sum = 0.0f;
    for (size_t i = 1; i < k; i++) mx = logits[i] > mx ? logits[i] : mx;
    for (size_t i = 0; i < k; i++) sum += expf(logits[i] - mx);
    printf("top-5:");
    for (int r = 0; r < 5 && r < (int)k; r++) {
        size_t best = k;
        for (size_t i = 0; i < k; i++) {
            if (logits[i] != logits[i]) continue; /* NaN */
            if (best == k || logits[i] > logits[best]) best = i;
        }
        if (best == k) break;
        printf("  class %zu (%.4f)", best, expf(logits[best] - mx) / sum);
        logits[best] = NAN; /* taken */
    }
    printf("\n");

    /* One op on raw pointers: top-3 of a row, on the host shim (host pointers). */
    ClcaDevice *dev = NULL;
    CHECK(clca_device_create(CLCA_BACKEND_HOST_SHIM, 0, &dev));
    const float row[8] = {0.1f, 0.7f, -1.0f, 0.7f, 2.5f, 0.0f, -0.0f, 0.3f};
    uint32_t idx[3], rest[5];
    CHECK(clca_topk_select(dev, CLCA_DTYPE_F32, row, 1, 8, 3, idx, rest, NULL));
    printf("top-3 of the row: %u %u %u (ties by lower index); the rest: %u %u %u %u %u\n",
           idx[0], idx[1], idx[2], rest[0], rest[1], rest[2], rest[3], rest[4]);
    if (idx[0] != 4 || idx[1] != 1 || idx[2] != 3) return 1;

    /* Errors come back as codes with a message; nothing crashes. */
    printf("errors:\n");
    ClcaModel *bad = NULL;
    int fails = 0;
    fails += expect_error("keep rate 1.5",
                          clca_model_create_random("--keep_rate 1.5", 0, CLCA_BACKEND_CPU,
                                                   CLCA_DTYPE_F32, 0, &bad),
                          CLCA_STATUS_INVALID_ARGUMENT);
    fails += expect_error("an unknown flag",
                          clca_model_create_random("--keep-rate-typo 0.5", 0, CLCA_BACKEND_CPU,
                                                   CLCA_DTYPE_F32, 0, &bad),
                          CLCA_STATUS_INVALID_ARGUMENT);
    fails += expect_error("a missing checkpoint",
                          clca_model_create("/nonexistent/w.safetensors", flags, CLCA_BACKEND_CPU,
                                            CLCA_DTYPE_F32, 0, &bad),
                          CLCA_STATUS_WEIGHTS);
    fails += expect_error("one float short",
                          clca_model_forward(model, image, n_img - 1, 1, logits, k),
                          CLCA_STATUS_SHAPE);
    fails += expect_error("a null image", clca_model_forward(model, NULL, n_img, 1, logits, k),
                          CLCA_STATUS_INVALID_ARGUMENT);
    fails += expect_error("f16 on the CPU backend",
                          clca_model_create_random(flags, 0, CLCA_BACKEND_CPU, CLCA_DTYPE_F16, 0,
                                                   &bad),
                          CLCA_STATUS_DTYPE);
    if (bad != NULL) fails++;

    clca_device_destroy(dev);
    clca_model_destroy(model);
    clca_model_destroy(NULL); /* a no-op */
    free(image);
    free(logits);
    if (fails) {
        fprintf(stderr, "%d error paths misbehaved\n", fails);
        return 1;
    }
    printf("ok\n");
    return 0;
}
