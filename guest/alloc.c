/* alloc.c: the physical page allocator, a bitmap over the RAM ranges of the PVH memory map. */
#include "kernel.h"

#define MAX_RANGES 32
#define LOW_LIMIT 0x100000UL           /* the first MiB: boot info, legacy holes */
#define FOUR_GIB 0x100000000ULL
#define ONE_GIB 0x40000000ULL

extern char __image_start[], __image_end[];
extern u64 pdpt[];

struct alloc_stats mem;
u64 max_pfn;
unsigned (*oom_hook)(void);

static struct { u64 start, end; } ranges[MAX_RANGES];
static unsigned nranges;
static u64 *free_map;                  /* bit set = page free */
static u64 *marks[MARK_COUNT];
static u64 map_words;
static u64 hint;                       /* word index where the next search starts */

void alloc_add_range(u64 start, u64 end)
{
    mem.ram_bytes += end - start;
    /* Page-align inwards, then cut out the low MiB and the kernel image (which holds the page tables). */
    start = (start + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
    end &= ~(PAGE_SIZE - 1);
    if (start < LOW_LIMIT)
        start = LOW_LIMIT;
    u64 img_s = (u64)(uintptr_t)__image_start, img_e = (u64)(uintptr_t)__image_end;
    if (start < img_e && end > img_s) {
        if (start < img_s && nranges < MAX_RANGES) {
            ranges[nranges].start = start;
            ranges[nranges].end = img_s;
            nranges++;
        }
        start = img_e;
    }
    if (start < end && nranges < MAX_RANGES) {
        ranges[nranges].start = start;
        ranges[nranges].end = end;
        nranges++;
    }
}

static inline void bit_set(u64 *map, u64 i) { map[i >> 6] |= 1ULL << (i & 63); }
static inline void bit_clear(u64 *map, u64 i) { map[i >> 6] &= ~(1ULL << (i & 63)); }
static inline bool bit_test(const u64 *map, u64 i) { return (map[i >> 6] >> (i & 63)) & 1; }

/* Take n pages off the front of the first range that has them (before the free map exists). */
static u64 carve(u64 n)
{
    for (unsigned i = 0; i < nranges; i++) {
        if (ranges[i].end <= FOUR_GIB && ranges[i].end - ranges[i].start >= n * PAGE_SIZE) {
            u64 pa = ranges[i].start;
            ranges[i].start += n * PAGE_SIZE;
            return pa;
        }
    }
    return 0;
}

/* Map RAM above 4 GiB (large guests): one page directory of 2 MiB pages per GiB. */
static bool map_high(u64 max_addr)
{
    for (u64 gib = 4; gib * ONE_GIB < max_addr && gib < 512; gib++) {
        u64 *pd = (u64 *)(uintptr_t)carve(1);
        if (!pd)
            return false;
        for (u64 i = 0; i < 512; i++)
            pd[i] = (gib * ONE_GIB + i * 0x200000ULL) | 0x83;
        pdpt[gib] = (u64)(uintptr_t)pd | 0x3;
    }
    flush_tlb();
    return true;
}

void alloc_init(void)
{
    u64 max_addr = 0;
    for (unsigned i = 0; i < nranges; i++)
        max_addr = MAX(max_addr, ranges[i].end);
    if (max_addr > FOUR_GIB && !map_high(max_addr)) {
        printf("alloc: cannot map RAM above 4 GiB; using the low 4 GiB only\n");
        max_addr = FOUR_GIB;
    }
    max_pfn = max_addr >> PAGE_SHIFT;
    map_words = (max_pfn + 63) / 64;
    u64 bytes = map_words * 8 * (1 + MARK_COUNT);
    u64 pa = carve((bytes + PAGE_SIZE - 1) / PAGE_SIZE);
    if (!pa) {
        printf("alloc: no room for the page bitmaps\n");
        guest_exit(EXIT_BAD_BOOT);
    }
    memset((void *)(uintptr_t)pa, 0, bytes);
    free_map = (u64 *)(uintptr_t)pa;
    for (int m = 0; m < MARK_COUNT; m++)
        marks[m] = free_map + map_words * (u64)(m + 1);
    for (unsigned i = 0; i < nranges; i++) {
        u64 end = MIN(ranges[i].end, max_addr);
        u64 last = end >> PAGE_SHIFT;
        for (u64 p = ranges[i].start >> PAGE_SHIFT; p < last;) {
            /* Whole words at a time where the range covers them: guest code runs slowly here. */
            if (!(p & 63) && p + 64 <= last && free_map[p >> 6] == 0) {
                free_map[p >> 6] = ~0ULL;
                mem.total_pages += 64;
                mem.free_pages += 64;
                p += 64;
                continue;
            }
            if (!bit_test(free_map, p)) {
                bit_set(free_map, p);
                mem.total_pages++;
                mem.free_pages++;
            }
            p++;
        }
    }
}

static u64 take_one(void)
{
    for (u64 n = 0; n < map_words; n++) {
        u64 w = (hint + n) % map_words;
        if (free_map[w]) {
            u64 pfn = w * 64 + (u64)__builtin_ctzll(free_map[w]);
            bit_clear(free_map, pfn);
            mem.free_pages--;
            hint = w;
            return pfn << PAGE_SHIFT;
        }
    }
    return 0;
}

u64 alloc_page_noretry(void)
{
    return take_one();
}

u64 alloc_page(void)
{
    for (;;) {
        u64 pa = take_one();
        if (pa)
            return pa;
        if (!oom_hook || oom_hook() == 0) {
            mem.alloc_failures++;
            return 0;
        }
    }
}

u64 alloc_page_touch(u64 value)
{
    u64 pa = alloc_page();
    if (pa) {
        *(volatile u64 *)(uintptr_t)pa = value;
        mem.minor_faults++;
    }
    return pa;
}

void free_page(u64 pa)
{
    u64 pfn = pa >> PAGE_SHIFT;
    if (pfn >= max_pfn || bit_test(free_map, pfn)) {
        printf("alloc: bad free of %#llx\n", pa);
        guest_exit(EXIT_FAIL);
    }
    bit_set(free_map, pfn);
    mem.free_pages++;
}

bool page_is_free(u64 pfn) { return pfn < max_pfn && bit_test(free_map, pfn); }
void mark_set(int m, u64 pfn) { bit_set(marks[m], pfn); }
void mark_clear(int m, u64 pfn) { bit_clear(marks[m], pfn); }
bool mark_test(int m, u64 pfn) { return pfn < max_pfn && bit_test(marks[m], pfn); }

static u64 next_in(const u64 *map, u64 from)
{
    while (from < max_pfn) {
        u64 w = map[from >> 6] >> (from & 63);
        if (w)
            return MIN(from + (u64)__builtin_ctzll(w), max_pfn);
        from = (from | 63) + 1;
    }
    return max_pfn;
}

u64 mark_next(int m, u64 from) { return next_in(marks[m], from); }

/* Bulk operations a bitmap word at a time.  The guest's code runs emulated on nested hosts (about a
   microsecond an instruction), so the balloon's per-page work is kept to a few instructions: a page
   taken from a word is one ctz and a store, its marks are set for the whole word at once. */

unsigned alloc_bulk(u32 *pfns, unsigned n)
{
    unsigned got = 0;
    u64 start = hint;
    for (u64 k = 0; k < map_words && got < n; k++) {
        u64 w = start + k < map_words ? start + k : start + k - map_words;
        u64 bits = free_map[w];
        if (!bits)
            continue;
        unsigned before = got;
        while (bits && got < n) {
            pfns[got++] = (u32)(w * 64 + (u64)__builtin_ctzll(bits));
            bits &= bits - 1;
        }
        free_map[w] = bits;
        mem.free_pages -= got - before;
        hint = w;
    }
    return got;
}

/* Set mark `on` and clear mark `off` (-1: none) for each pfn, a word at a time for runs in one word. */
void marks_update(const u32 *pfns, unsigned n, int on, int off)
{
    for (unsigned i = 0; i < n;) {
        u64 w = pfns[i] >> 6, mask = 0;
        for (; i < n && pfns[i] >> 6 == w; i++)
            mask |= 1ULL << (pfns[i] & 63);
        if (on >= 0)
            marks[on][w] |= mask;
        if (off >= 0)
            marks[off][w] &= ~mask;
    }
}

unsigned mark_take(int m, u32 *pfns, unsigned n, u64 *from)
{
    unsigned got = 0;
    u64 w = *from >> 6;
    for (u64 k = 0; k <= map_words && got < n; k++, w++) {
        if (w >= map_words)
            w = 0;
        u64 bits = marks[m][w];
        while (bits && got < n) {
            pfns[got++] = (u32)(w * 64 + (u64)__builtin_ctzll(bits));
            bits &= bits - 1;
        }
        marks[m][w] = bits;
        *from = w * 64;
    }
    return got;
}

void free_bulk(const u32 *pfns, unsigned n)
{
    for (unsigned i = 0; i < n;) {
        unsigned start = i;
        u64 w = pfns[i] >> 6, mask = 0;
        for (; i < n && pfns[i] >> 6 == w; i++)
            mask |= 1ULL << (pfns[i] & 63);
        if (pfns[i - 1] >= max_pfn || free_map[w] & mask) {
            printf("alloc: bad free of a page in %#llx..%#llx\n", w * 64 * PAGE_SIZE, (w * 64 + 63) * PAGE_SIZE);
            guest_exit(EXIT_FAIL);
        }
        free_map[w] |= mask;
        mem.free_pages += i - start;       /* the pfns are distinct: a balloon holds each page once */
    }
}
u64 free_next(u64 from) { return next_in(free_map, from); }

bool alloc_selftest(void)
{
    u64 before = mem.free_pages;
    u64 a = alloc_page(), b = alloc_page(), c = alloc_page_touch(0x1234);
    bool ok = a && b && c && a != b && b != c && a != c && !(a & (PAGE_SIZE - 1)) &&
              mem.free_pages == before - 3 && !page_is_free(a >> PAGE_SHIFT) &&
              *(volatile u64 *)(uintptr_t)c == 0x1234 && a >= LOW_LIMIT &&
              (a >= (u64)(uintptr_t)__image_end || a + PAGE_SIZE <= (u64)(uintptr_t)__image_start);
    free_page(a);
    free_page(b);
    free_page(c);
    ok = ok && mem.free_pages == before && page_is_free(b >> PAGE_SHIFT);
    ok = ok && mem.total_pages * PAGE_SIZE <= mem.ram_bytes && mem.free_pages <= mem.total_pages;
    return ok;
}
