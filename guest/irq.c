/* irq.c: the IDT, exception reports, the LAPIC (EOI and a periodic timer) and IOAPIC pin routing. */
#include "kernel.h"

#define LAPIC_BASE 0xfee00000UL
#define LAPIC_ID 0x020
#define LAPIC_TPR 0x080
#define LAPIC_EOI 0x0b0
#define LAPIC_SVR 0x0f0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_LVT_ERROR 0x370
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_DIV 0x3e0
#define LVT_MASKED (1u << 16)
#define LVT_PERIODIC (1u << 17)
#define SVR_ENABLE (1u << 8)
#define MSR_APIC_BASE 0x1b
#define APIC_BASE_ENABLE (1u << 11)

#define IOAPIC_BASE 0xfec00000UL
#define IOAPIC_REGSEL 0x00
#define IOAPIC_WIN 0x10
#define IOAPIC_REG_VER 0x01
#define IOAPIC_REDTBL(n) (0x10 + 2 * (n))
#define RTE_LEVEL (1u << 15)
#define RTE_MASKED (1u << 16)
#define MAX_GSI 24

struct idt_entry {
    u16 offset_lo, selector;
    u8 ist, type_attr;
    u16 offset_mid;
    u32 offset_hi, zero;
} __attribute__((packed));

static struct idt_entry idt[256] __attribute__((aligned(16)));
extern const u64 isr_stub_table[72];
extern const u64 isr_stub_spurious, isr_stub_timer;
volatile u64 ticks;
u32 ioapic_version;
static u32 ioapic_pins;
static u32 lapic_id;
static struct {
    void (*fn)(void *);
    void *arg;
} gsi_handlers[MAX_GSI];

static const char *const exception_names[32] = {
    "#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow", "#BR bound range",
    "#UD invalid opcode", "#NM device not available", "#DF double fault", "coprocessor overrun",
    "#TS invalid TSS", "#NP segment not present", "#SS stack fault", "#GP general protection",
    "#PF page fault", "reserved", "#MF x87 error", "#AC alignment check", "#MC machine check",
    "#XM SIMD error", "#VE virtualization", "#CP control protection",
};

static inline u32 lapic_read(u32 reg) { return mmio_read32(LAPIC_BASE + reg); }
static inline void lapic_write(u32 reg, u32 v) { mmio_write32(LAPIC_BASE + reg, v); }

static u32 ioapic_read(u32 reg)
{
    mmio_write32(IOAPIC_BASE + IOAPIC_REGSEL, reg);
    return mmio_read32(IOAPIC_BASE + IOAPIC_WIN);
}

static void ioapic_write(u32 reg, u32 v)
{
    mmio_write32(IOAPIC_BASE + IOAPIC_REGSEL, reg);
    mmio_write32(IOAPIC_BASE + IOAPIC_WIN, v);
}

static void set_gate(unsigned vec, u64 handler)
{
    idt[vec].offset_lo = (u16)handler;
    idt[vec].selector = 0x08;
    idt[vec].ist = 0;
    idt[vec].type_attr = 0x8e; /* present, DPL 0, 64-bit interrupt gate: IF cleared on entry */
    idt[vec].offset_mid = (u16)(handler >> 16);
    idt[vec].offset_hi = (u32)(handler >> 32);
    idt[vec].zero = 0;
}

static u64 rdmsr(u32 msr)
{
    u32 lo, hi;
    __asm__ __volatile__("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((u64)hi << 32) | lo;
}

static void wrmsr(u32 msr, u64 v)
{
    __asm__ __volatile__("wrmsr" ::"c"(msr), "a"((u32)v), "d"((u32)(v >> 32)));
}

void irq_init(void)
{
    for (unsigned v = 0; v < ARRAY_SIZE(idt); v++)
        if (v < 72)
            set_gate(v, isr_stub_table[v]);
    set_gate(VEC_SPURIOUS, isr_stub_spurious);
    set_gate(VEC_TIMER, isr_stub_timer);
    struct {
        u16 limit;
        u64 base;
    } __attribute__((packed)) idtr = {sizeof(idt) - 1, (u64)(uintptr_t)idt};
    __asm__ __volatile__("lidt %0" ::"m"(idtr));

    /* The 8259 PICs would deliver through LINT0 as ExtINT: mask every line, we use the IOAPIC. */
    outb(0x21, 0xff);
    outb(0xa1, 0xff);

    wrmsr(MSR_APIC_BASE, rdmsr(MSR_APIC_BASE) | APIC_BASE_ENABLE);
    lapic_id = lapic_read(LAPIC_ID) >> 24;
    lapic_write(LAPIC_TPR, 0);
    lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
    lapic_write(LAPIC_LVT_ERROR, LVT_MASKED);
    lapic_write(LAPIC_SVR, SVR_ENABLE | VEC_SPURIOUS);
    /* A periodic tick so that hlt-based waits can time out: KVM's LAPIC counts a 1 GHz bus clock,
       divided by 16 that is 62.5 MHz, so 625000 counts are about 10 ms. */
    lapic_write(LAPIC_TIMER_DIV, 0x3);
    lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | VEC_TIMER);
    lapic_write(LAPIC_TIMER_INIT, 62500000 / TIMER_HZ);

    u32 ver = ioapic_read(IOAPIC_REG_VER);
    ioapic_version = ver & 0xff;
    ioapic_pins = ((ver >> 16) & 0xff) + 1;
    if (ioapic_pins > MAX_GSI)
        ioapic_pins = MAX_GSI;
    for (u32 pin = 0; pin < ioapic_pins; pin++) {
        ioapic_write(IOAPIC_REDTBL(pin), RTE_MASKED | (VEC_GSI_BASE + pin));
        ioapic_write(IOAPIC_REDTBL(pin) + 1, 0);
    }
}

bool irq_route_gsi(u32 gsi, void (*handler)(void *), void *arg)
{
    if (gsi >= ioapic_pins)
        return false;
    gsi_handlers[gsi].fn = handler;
    gsi_handlers[gsi].arg = arg;
    /* virtio-mmio raises a level line while InterruptStatus != 0 (QEMU and pyvmm alike):
       level-triggered, active high, fixed delivery, physical destination = this CPU. */
    ioapic_write(IOAPIC_REDTBL(gsi) + 1, lapic_id << 24);
    ioapic_write(IOAPIC_REDTBL(gsi), RTE_LEVEL | (VEC_GSI_BASE + gsi));
    return true;
}

void irq_mask_gsi(u32 gsi)
{
    if (gsi < ioapic_pins)
        ioapic_write(IOAPIC_REDTBL(gsi), RTE_MASKED | RTE_LEVEL | (VEC_GSI_BASE + gsi));
}

volatile u64 breakpoints;
bool breakpoints_expected;

void isr_dispatch(struct frame *f)
{
    if (f->vector == 3 && breakpoints_expected) {
        breakpoints++; /* #BP is a trap: RIP is already past the int3 */
        return;
    }
    if (f->vector < 32) {
        printf("exception: vector=%llu (%s) error=%#llx rip=%#llx cs=%#llx rflags=%#llx rsp=%#llx "
               "cr2=%#llx\n",
               f->vector, exception_names[f->vector] ? exception_names[f->vector] : "reserved",
               f->error, f->rip, f->cs, f->rflags, f->rsp, read_cr2());
        printf("scenario %s: FAIL exception %llu\n", current_scenario, f->vector);
        guest_exit(EXIT_EXCEPTION);
    }
    if (f->vector == VEC_SPURIOUS)
        return; /* no EOI for the spurious vector (Intel SDM vol. 3, "Spurious Interrupt") */
    if (f->vector == VEC_TIMER) {
        ticks++;
    } else if (f->vector >= VEC_GSI_BASE && f->vector < VEC_GSI_BASE + MAX_GSI) {
        u32 gsi = (u32)f->vector - VEC_GSI_BASE;
        if (gsi_handlers[gsi].fn)
            gsi_handlers[gsi].fn(gsi_handlers[gsi].arg);
    }
    /* The device handler has already acknowledged InterruptStatus, so the level line is low by
       now and the IOAPIC will not redeliver after this EOI. */
    lapic_write(LAPIC_EOI, 0);
}

bool wait_until_changed(volatile u64 *flag, u64 seen, u64 max_ticks)
{
    u64 start = ticks;
    for (;;) {
        cli();
        if (*flag != seen) {
            sti();
            return true;
        }
        if (max_ticks && ticks - start >= max_ticks) {
            sti();
            return false;
        }
        /* sti takes effect after the next instruction: an interrupt between the check and hlt
           still wakes the hlt. */
        __asm__ __volatile__("sti; hlt" ::: "memory");
    }
}

void sleep_ticks(u64 n)
{
    u64 start = ticks;
    while (ticks - start < n)
        __asm__ __volatile__("sti; hlt" ::: "memory");
}
