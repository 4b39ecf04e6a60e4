/* kernel.h: types, port and MMIO access, and the interfaces shared by the guest's modules. */
#ifndef GUEST_KERNEL_H
#define GUEST_KERNEL_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long s64;
typedef unsigned long size_t;
typedef unsigned long uintptr_t;
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)

#define PAGE_SIZE 4096UL
#define PAGE_SHIFT 12
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define barrier() __asm__ __volatile__("" ::: "memory")
#define mb() __asm__ __volatile__("mfence" ::: "memory")

/* Exit codes written to the exit device (port 0xf4).  QEMU's isa-debug-exit turns code c into
   process status (c << 1) | 1; pyvmm exits with c itself.  Documented in README.md. */
enum exit_code {
    EXIT_PASS = 0,
    EXIT_FAIL = 1,
    EXIT_EXCEPTION = 2,
    EXIT_OOM = 3,
    EXIT_NO_DEVICE = 4,
    EXIT_BAD_BOOT = 5,
    EXIT_BAD_SCENARIO = 6,
};

static inline void outb(u16 port, u8 v) { __asm__ __volatile__("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ __volatile__("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ __volatile__("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ __volatile__("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline u32 mmio_read32(u64 addr) { return *(volatile u32 *)addr; }
static inline u16 mmio_read16(u64 addr) { return *(volatile u16 *)addr; }
static inline u8 mmio_read8(u64 addr) { return *(volatile u8 *)addr; }
static inline void mmio_write32(u64 addr, u32 v) { *(volatile u32 *)addr = v; }
static inline void mmio_write16(u64 addr, u16 v) { *(volatile u16 *)addr = v; }
static inline void mmio_write8(u64 addr, u8 v) { *(volatile u8 *)addr = v; }
static inline void cli(void) { __asm__ __volatile__("cli" ::: "memory"); }
static inline void sti(void) { __asm__ __volatile__("sti" ::: "memory"); }
static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ __volatile__("lfence; rdtsc" : "=a"(lo), "=d"(hi)::"memory");
    return ((u64)hi << 32) | lo;
}
static inline u64 read_cr2(void)
{
    u64 v;
    __asm__ __volatile__("mov %%cr2, %0" : "=r"(v));
    return v;
}
static inline u64 read_cr3(void)
{
    u64 v;
    __asm__ __volatile__("mov %%cr3, %0" : "=r"(v));
    return v;
}
/* CR3 written with itself: every non-global TLB entry dropped, after a page-table edit. */
static inline void flush_tlb(void)
{
    __asm__ __volatile__("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory");
}

/* lib: printf.c, uart.c */
typedef __builtin_va_list va_list;
#define va_start __builtin_va_start
#define va_end __builtin_va_end
#define va_arg __builtin_va_arg
void uart_init(void);
void uart_putc(char c);
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
void guest_exit(u32 code) __attribute__((noreturn));

/* cmdline.c */
#define CMDLINE_MAX 2048
extern char cmdline[CMDLINE_MAX];
void cmdline_set(const char *src);
/* Value of the last `key=value` with this key, copied into buf; false when absent. */
bool cmdline_get(const char *line, const char *key, char *buf, size_t size);
/* Index-th occurrence of key (0-based), for repeated keys such as virtio_mmio.device. */
bool cmdline_get_nth(const char *line, const char *key, unsigned index, char *buf, size_t size);
bool parse_u64(const char *s, u64 *out, const char **end);
/* A size with optional K/M/G suffix (binary units). */
bool parse_size(const char *s, u64 *out);
u64 cmdline_u64(const char *key, u64 dflt);
struct mmio_dev_param {
    u64 size, base;
    u32 irq;
};
/* Parse `<size>@<base>:<irq>[:<id>]` as Linux's virtio_mmio does. */
bool parse_virtio_mmio_device(const char *s, struct mmio_dev_param *out);

/* alloc.c: a bitmap page allocator over the RAM ranges of the PVH memory map. */
struct alloc_stats {
    u64 total_pages;    /* RAM pages under the allocator's management */
    u64 free_pages;
    u64 ram_bytes;      /* sum of type-1 RAM in the memory map */
    u64 minor_faults;   /* pages handed out and first written by their user (alloc_page_touch) */
    u64 alloc_failures; /* alloc_page() found no page even after the OOM hook */
};
extern struct alloc_stats mem;
extern u64 max_pfn;
void alloc_add_range(u64 start, u64 end);
void alloc_init(void);
/* 0 when out of memory (after the OOM hook, if any, could not help). */
u64 alloc_page(void);
/* Never calls the OOM hook: the balloon inflating must not deflate itself (Linux: __GFP_NORETRY). */
u64 alloc_page_noretry(void);
/* alloc_page() plus one write to the page (the page's "first touch"); counted in minor_faults. */
u64 alloc_page_touch(u64 value);
void free_page(u64 pa);
bool page_is_free(u64 pfn);
/* Called when the free list is empty; returns pages it put back (the balloon's deflate-on-OOM). */
extern unsigned (*oom_hook)(void);
/* Per-page marks kept beside the allocator (one bit per page frame). */
enum page_mark { MARK_BALLOON, MARK_DIRTIED, MARK_RETURNED, MARK_COUNT };
void mark_set(int mark, u64 pfn);
void mark_clear(int mark, u64 pfn);
bool mark_test(int mark, u64 pfn);
u64 mark_next(int mark, u64 from); /* next pfn >= from with the mark, or max_pfn */
/* Bulk forms, a bitmap word at a time (the balloon's per-page cost): up to n free pages taken into
   pfns; marks set (on) and cleared (off, -1 for none) for each of n pfns; up to n pages with mark m
   taken off it into pfns, searching from *from (updated); n distinct pages freed. */
unsigned alloc_bulk(u32 *pfns, unsigned n);
void marks_update(const u32 *pfns, unsigned n, int on, int off);
unsigned mark_take(int mark, u32 *pfns, unsigned n, u64 *from);
void free_bulk(const u32 *pfns, unsigned n);
u64 free_next(u64 from);           /* next free pfn >= from, or max_pfn */
bool alloc_selftest(void);

/* irq.c */
struct frame {
    u64 r15, r14, r13, r12, r11, r10, r9, r8, rdi, rsi, rbp, rbx, rdx, rcx, rax;
    u64 vector, error, rip, cs, rflags, rsp, ss;
};
/* The timer outranks the device vectors (priority class 15), so that timeouts still expire while
   a device holds its interrupt line up. */
#define VEC_TIMER 0xf0
#define VEC_GSI_BASE 0x30
#define VEC_SPURIOUS 0xff
#define TIMER_HZ 100
void irq_init(void);
/* Route IOAPIC pin gsi (level-triggered, active-high) to handler; false if the pin does not exist. */
bool irq_route_gsi(u32 gsi, void (*handler)(void *), void *arg);
void irq_mask_gsi(u32 gsi);
extern volatile u64 ticks;
/* #BP count of the gaps scenario, which sets breakpoints_expected. */
extern volatile u64 breakpoints;
extern bool breakpoints_expected;
/* Sleep with interrupts on until *flag changes from seen or max_ticks elapse (0 = forever). */
bool wait_until_changed(volatile u64 *flag, u64 seen, u64 max_ticks);
void sleep_ticks(u64 n);
/* Set by the exception path when a test expects a fault (triplefault scenario does not). */
extern u32 ioapic_version;

/* main.c */
extern u64 boot_start_info;
extern const char *current_scenario;
void kmain(u32 start_info_pa);

#endif
