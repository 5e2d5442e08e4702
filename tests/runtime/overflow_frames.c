/*
 * overflow_frames.c -- functions with one huge stack frame each, for
 * test_overflow.c.
 *
 * Built twice (tests/runtime/meson.build): once with -fno-stack-clash-
 * protection, where the prologue moves the stack pointer by the whole frame
 * in one instruction and the first access is the call at its bottom -- the
 * case that jumps over a guard smaller than the frame -- and once with
 * -fstack-clash-protection, where the prologue touches every page on the
 * way down and so always faults in the first page of any guard.
 * FRAMES_SUFFIX names the variant (_plain, _clash).
 */
#define FR_CAT2(a, b) a##b
#define FR_CAT(a, b) FR_CAT2(a, b)
#define FR_NAME(n) FR_CAT(n, FRAMES_SUFFIX)

/* Defined in test_overflow.c, out of sight of the optimiser: writes the
 * lowest bytes of the frame, as a read() or memset() into it would. */
void ovf_touch(char *p, unsigned long n, int seed);

int FR_NAME(ovf_frame_73727)(int seed);
int FR_NAME(ovf_frame_1m)(int seed);
int FR_NAME(ovf_frame_8m)(int seed);

#define FRAME_FN(fn, bytes)                                                 \
    __attribute__((noinline)) int FR_NAME(fn)(int seed)                     \
    {                                                                       \
        char buf[bytes];                                                    \
        ovf_touch(buf, sizeof buf, seed);                                   \
        return buf[seed & 63];                                              \
    }

FRAME_FN(ovf_frame_73727, 73727)
FRAME_FN(ovf_frame_1m, 1024 * 1024)
FRAME_FN(ovf_frame_8m, 8 * 1024 * 1024)
