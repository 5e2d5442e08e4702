/*
 * relocs.c -- what each loaded libpq's own calls really reach.
 *
 * Whether the shim works is decided by libpq's relocations, not by the
 * process-wide symbol table: libpq calls poll, getaddrinfo, connect and its
 * own PQsendQuery/PQgetResult... through GOT entries the dynamic linker
 * filled in.  dlsym(RTLD_DEFAULT) can name the shim while a libpq loaded
 * with RTLD_DEEPBIND (its own dependencies searched first) or linked with
 * -Bsymbolic binds those entries elsewhere, and nothing reaches the shim.
 * So pqawait_interposed() reads them: for every loaded object that defines
 * PQexec (other than the shim), each JUMP_SLOT / GLOB_DAT relocation for
 * one of the symbols below is looked up in memory, and its target must lie
 * in the shim's object -- or in an object ahead of it in the lookup order
 * that forwards to the next definition (a sanitizer's interceptors; a
 * program's own wrapper).  A slot that still points into libpq itself but
 * not at libpq's own definition is a lazy-binding stub not resolved yet;
 * it is judged by the default lookup order (dlsym(RTLD_DEFAULT)), which is
 * what a lazily bound, non-DEEPBIND libpq will get.  Debian's libpq is
 * linked with BIND_NOW, so there every slot is final.
 *
 * ELF only, x86-64 and aarch64 (RELA); elsewhere it reports 0 when it
 * cannot tell.  Not a hot path: a program asks once.
 */
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "real.h"

#if defined(__x86_64__)
#define R_JUMP_SLOT R_X86_64_JUMP_SLOT
#define R_GLOB_DAT R_X86_64_GLOB_DAT
#elif defined(__aarch64__)
#define R_JUMP_SLOT R_AARCH64_JUMP_SLOT
#define R_GLOB_DAT R_AARCH64_GLOB_DAT
#endif

#define MAX_OBJS 512

/* The references that must reach the shim; poll is the one every libpq has. */
static const char *const checked[] = {
    "poll", "getaddrinfo", "connect", "PQsendQuery", "PQgetResult", "PQconnectPoll",
    "PQconnectStart", "PQconnectStartParams", "PQfinish",
};

struct obj {
    uintptr_t base;
    const char *name;
    const ElfW(Phdr) *phdr;
    int phnum;
};

struct objs {
    struct obj o[MAX_OBJS];
    int n;
};

static int collect(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct objs *os = data;
    if (os->n == MAX_OBJS)
        return 1;
    os->o[os->n++] = (struct obj){info->dlpi_addr, info->dlpi_name, info->dlpi_phdr, info->dlpi_phnum};
    return 0;
}

/* The object (index) whose loaded segments contain addr; -1: none. */
static int owner_of(const struct objs *os, uintptr_t addr)
{
    for (int i = 0; i < os->n; i++)
        for (int k = 0; k < os->o[i].phnum; k++) {
            const ElfW(Phdr) *ph = &os->o[i].phdr[k];
            if (ph->p_type != PT_LOAD)
                continue;
            uintptr_t lo = os->o[i].base + ph->p_vaddr;
            if (addr >= lo && addr < lo + ph->p_memsz)
                return i;
        }
    return -1;
}

/* A dynamic-section address: glibc relocates them in place on most
 * targets, not on all. */
static uintptr_t dyn_ptr(const struct obj *o, ElfW(Addr) p)
{
    return p < o->base ? o->base + p : p;
}

/* Whether a target in object `t` reaches the shim (object `us`). */
static int reaches(int t, int us)
{
    return t == us || (t >= 0 && t < us);
}

/* Does object i define PQexec?  (Asked through the dynamic linker, which
 * knows its hash tables.) */
static int is_libpq(const struct objs *os, int i)
{
    const char *name = os->o[i].name;
    if (!name || !name[0])
        return 0; /* the executable: a static libpq calls the program's own symbols */
    void *h = dlopen(name, RTLD_LAZY | RTLD_NOLOAD);
    if (!h)
        return 0;
    void *p = dlsym(h, "PQexec");
    int yes = p && owner_of(os, (uintptr_t)p) == i;
    dlclose(h);
    return yes;
}

static int wanted(const char *sym)
{
    for (size_t i = 0; i < sizeof checked / sizeof *checked; i++)
        if (strcmp(sym, checked[i]) == 0)
            return 1;
    return 0;
}

#ifdef R_JUMP_SLOT
/* Check libpq object i; 1: every checked reference reaches us. */
static int libpq_ok(const struct objs *os, int i, int us)
{
    const struct obj *o = &os->o[i];
    const ElfW(Dyn) *dyn = NULL;
    for (int k = 0; k < o->phnum; k++)
        if (o->phdr[k].p_type == PT_DYNAMIC)
            dyn = (const ElfW(Dyn) *)(o->base + o->phdr[k].p_vaddr);
    if (!dyn)
        return 0;
    const ElfW(Sym) *symtab = NULL;
    const char *strtab = NULL;
    const ElfW(Rela) *tabs[2] = {NULL, NULL};
    size_t sizes[2] = {0, 0};
    int pltrel_rela = 1;
    for (; dyn->d_tag != DT_NULL; dyn++) {
        switch (dyn->d_tag) {
        case DT_SYMTAB: symtab = (const ElfW(Sym) *)dyn_ptr(o, dyn->d_un.d_ptr); break;
        case DT_STRTAB: strtab = (const char *)dyn_ptr(o, dyn->d_un.d_ptr); break;
        case DT_JMPREL: tabs[0] = (const ElfW(Rela) *)dyn_ptr(o, dyn->d_un.d_ptr); break;
        case DT_PLTRELSZ: sizes[0] = dyn->d_un.d_val; break;
        case DT_PLTREL: pltrel_rela = dyn->d_un.d_val == DT_RELA; break;
        case DT_RELA: tabs[1] = (const ElfW(Rela) *)dyn_ptr(o, dyn->d_un.d_ptr); break;
        case DT_RELASZ: sizes[1] = dyn->d_un.d_val; break;
        default: break;
        }
    }
    if (!symtab || !strtab || !pltrel_rela)
        return 0;
    int saw_poll = 0;
    for (int t = 0; t < 2; t++) {
        for (size_t k = 0; tabs[t] && k < sizes[t] / sizeof(ElfW(Rela)); k++) {
            const ElfW(Rela) *r = &tabs[t][k];
            unsigned long type = ELF64_R_TYPE(r->r_info), idx = ELF64_R_SYM(r->r_info);
            if ((type != R_JUMP_SLOT && type != R_GLOB_DAT) || idx == 0)
                continue;
            const ElfW(Sym) *sym = &symtab[idx];
            const char *name = strtab + sym->st_name;
            if (!wanted(name))
                continue;
            uintptr_t target = *(const uintptr_t *)(o->base + r->r_offset);
            int where = owner_of(os, target);
            if (where == i) {
                uintptr_t def = sym->st_shndx != SHN_UNDEF ? o->base + sym->st_value : 0;
                if (target == def)
                    return 0; /* bound to libpq's own definition: DEEPBIND, -Bsymbolic */
                /* a lazy stub: what the default order will bind */
                void *p = dlsym(RTLD_DEFAULT, name);
                where = p ? owner_of(os, (uintptr_t)p) : -1;
            }
            if (!reaches(where, us))
                return 0;
            saw_poll |= strcmp(name, "poll") == 0;
        }
    }
    return saw_poll; /* a libpq that never calls poll cannot be made to wait cooperatively */
}
#else
static int libpq_ok(const struct objs *os, int i, int us)
{
    (void)os;
    (void)i;
    (void)us;
    return 0; /* cannot tell on this architecture */
}
#endif

int pqawait__libpq_bound(void)
{
    struct objs *os = malloc(sizeof *os);
    if (!os)
        return 0;
    os->n = 0;
    dl_iterate_phdr(collect, os); /* no dlopen inside its callback */
    int us = owner_of(os, (uintptr_t)pqawait__libpq_bound), found = 0, ok = us >= 0;
    for (int i = 0; ok && i < os->n; i++) {
        if (i == us || !is_libpq(os, i))
            continue;
        found = 1;
        ok = libpq_ok(os, i, us);
    }
    free(os);
    return ok && found;
}
