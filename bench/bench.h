/*
 * bench.h -- the measuring harness shared by the benchmarks in bench/.
 *
 * The machine the benchmarks run on is shared and noisy, so no absolute time
 * means much on its own.  Every benchmark therefore runs its variant and its
 * baseline in the same process, interleaved (A B A B ...), and reports the
 * median of each and their ratio: a noise burst then hits both sides alike.
 * The same binaries also run a single variant for a fixed count of operations
 * (-o NAME -n N), which is what script/bench feeds to strace and callgrind to
 * get syscalls and instructions per operation -- the stable numbers.
 *
 * Header-only (static functions) so each benchmark stays one file plus this.
 */
#ifndef AWAITLET_BENCH_H
#define AWAITLET_BENCH_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BENCH_MAX_ROUNDS 64

/* One side of a comparison.  run(n) performs n operations and returns the
 * seconds they took (setup excluded where the benchmark can manage it). */
struct bench_variant {
    const char *name;
    double (*run)(long n);
    long n;                          /* operations per round */
    double ns[BENCH_MAX_ROUNDS];     /* ns per operation, one per round */
    int rounds;
    double median, lo, hi;
};

struct bench_args {
    int rounds;        /* -r: interleaved rounds per variant */
    double scale;      /* -s: multiplies every default operation count */
    const char *only;  /* -o: run just this variant once (for strace/callgrind) */
    long n;            /* -n: operation count for -o */
};

__attribute__((unused, noreturn)) static void bench_die(const char *what)
{
    fprintf(stderr, "bench: %s: %s\n", what, strerror(errno));
    exit(1);
}

__attribute__((unused)) static double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

__attribute__((unused)) static void bench_usage(const char *prog, const char *variants)
{
    fprintf(stderr,
            "usage: %s [-r ROUNDS] [-s SCALE]      interleaved timing of all variants\n"
            "       %s -o VARIANT [-n OPS]         one run of one variant (for strace/callgrind)\n"
            "variants: %s\n",
            prog, prog, variants);
    exit(2);
}

__attribute__((unused)) static void bench_parse(int argc, char **argv, struct bench_args *a,
                                                const char *variants)
{
    int c;
    a->rounds = 15;
    a->scale = 1.0;
    a->only = NULL;
    a->n = 0;
    while ((c = getopt(argc, argv, "r:s:o:n:h")) != -1) {
        switch (c) {
        case 'r': a->rounds = atoi(optarg); break;
        case 's': a->scale = atof(optarg); break;
        case 'o': a->only = optarg; break;
        case 'n': a->n = atol(optarg); break;
        default: bench_usage(argv[0], variants);
        }
    }
    if (a->rounds < 1 || a->rounds > BENCH_MAX_ROUNDS || a->scale <= 0 || a->n < 0 ||
        optind != argc)
        bench_usage(argv[0], variants);
}

/* Default operation count scaled by -s, never below 1. */
__attribute__((unused)) static long bench_scaled(const struct bench_args *a, long n)
{
    long s = (long)((double)n * a->scale);
    return s < 1 ? 1 : s;
}

static double bench_median(const double *v, int n)
{
    double s[BENCH_MAX_ROUNDS];
    memcpy(s, v, sizeof(double) * (size_t)n);
    qsort(s, (size_t)n, sizeof(double), bench_cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/* Run each variant once at a tenth of its count (to warm caches, pools and
 * lazy binding), then `rounds` interleaved rounds, every other one in reverse
 * order (A B, B A, A B ...) so neither side always runs right after the
 * other; fill in the medians. */
__attribute__((unused)) static void bench_interleave(struct bench_variant *v, int nv, int rounds)
{
    for (int i = 0; i < nv; i++)
        v[i].run(v[i].n / 10 + 1);
    for (int r = 0; r < rounds; r++)
        for (int j = 0; j < nv; j++) {
            int i = r % 2 ? nv - 1 - j : j;
            v[i].ns[r] = v[i].run(v[i].n) * 1e9 / (double)v[i].n;
        }
    for (int i = 0; i < nv; i++) {
        v[i].rounds = rounds;
        v[i].median = bench_median(v[i].ns, rounds);
        v[i].lo = v[i].hi = v[i].ns[0];
        for (int r = 1; r < rounds; r++) {
            v[i].lo = v[i].ns[r] < v[i].lo ? v[i].ns[r] : v[i].lo;
            v[i].hi = v[i].ns[r] > v[i].hi ? v[i].ns[r] : v[i].hi;
        }
    }
}

/* "-o NAME": find and run that variant once; returns 1 if it was handled. */
__attribute__((unused)) static int bench_only(struct bench_variant *v, int nv,
                                              const struct bench_args *a)
{
    if (!a->only)
        return 0;
    for (int i = 0; i < nv; i++) {
        if (strcmp(v[i].name, a->only) == 0) {
            long n = a->n ? a->n : v[i].n;
            double t = v[i].run(n);
            printf("%s n=%ld ns/op=%.1f\n", v[i].name, n, t * 1e9 / (double)n);
            return 1;
        }
    }
    fprintf(stderr, "bench: no variant named %s\n", a->only);
    exit(2);
}

/* One metric per line: "<bench>  <what> <value>  (<note>)". */
__attribute__((unused)) static void bench_line(const char *bench, const char *what, double value,
                                               const char *note)
{
    printf("%-9s %-40s %10.2f  %s\n", bench, what, value, note ? note : "");
    fflush(stdout);
}

__attribute__((unused)) static void bench_report(const char *bench, const struct bench_variant *v,
                                                 const char *unit, int rounds, const char *target)
{
    char what[128], note[160];
    snprintf(what, sizeof what, "%s %s", v->name, unit);
    snprintf(note, sizeof note, "(median of %d, range %.1f..%.1f)%s%s", rounds, v->lo, v->hi,
             target ? "  " : "", target ? target : "");
    bench_line(bench, what, v->median, note);
}

/* The ratio a/b, as the median of the per-round ratios: rounds of a and b
 * ran back to back, so load that comes and goes mostly cancels out within a
 * pair, which a ratio of the two medians would not do.  The ratio of the
 * medians is shown next to it. */
__attribute__((unused)) static void bench_ratio(const char *bench, const struct bench_variant *a,
                                                const struct bench_variant *b, const char *target)
{
    char what[128], note[160];
    double r[BENCH_MAX_ROUNDS];
    for (int i = 0; i < a->rounds; i++)
        r[i] = a->ns[i] / b->ns[i];
    snprintf(what, sizeof what, "%s/%s ratio", a->name, b->name);
    snprintf(note, sizeof note, "(paired rounds; ratio of medians %.2f)%s%s", a->median / b->median,
             target && *target ? "  " : "", target ? target : "");
    bench_line(bench, what, bench_median(r, a->rounds), note);
}

#endif
