/*
 * A toy Multiboot kernel of the kind OS tutorials write: it prints to the VGA text buffer and to COM1,
 * reads the Multiboot information (memory, command line, modules, memory map) and types back what the
 * PS/2 keyboard sends, by IRQ 1 through the 8259 PIC. pyvmm's tests boot it beside QEMU and compare
 * the screens; docs/toy-kernels.md walks through it.
 *
 * The VGA screen shows only what a PC and pyvmm agree on (QEMU's BIOS reserves memory pyvmm does not,
 * puts the information elsewhere and names itself "qemu"); the serial port gets everything.
 */

#include <stdint.h>

#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002
#define MULTIBOOT_AOUT_KLUDGE      0x00010000
#define INFO_MEMORY   (1u << 0)
#define INFO_CMDLINE  (1u << 2)
#define INFO_MODS     (1u << 3)
#define INFO_MMAP     (1u << 6)
#define INFO_LOADER   (1u << 9)

/* The fields of the spec's multiboot_info this kernel reads (3.3 "Boot information format"). */
struct multiboot_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length, mmap_addr, drives_length, drives_addr, config_table, boot_loader_name;
};
struct multiboot_mod_list { uint32_t mod_start, mod_end, cmdline, pad; };
struct multiboot_mmap_entry { uint32_t size; uint64_t addr, len; uint32_t type; } __attribute__((packed));

extern const uint32_t multiboot_header[3];
extern void isr0(void), isr6(void), isr8(void), isr13(void), isr14(void), isr32(void), isr33(void), isr39(void);

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }

/* --- COM1 ------------------------------------------------------------------------------------------ */

#define COM1 0x3F8

static void serial_init(void)
{
    outb(COM1 + 1, 0x00);           /* no interrupts */
    outb(COM1 + 3, 0x80);           /* DLAB: 115200 baud */
    outb(COM1 + 0, 0x01);
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);           /* 8N1 */
    outb(COM1 + 2, 0xC7);           /* FIFO on, cleared */
}

static void serial_putc(char c)
{
    if (c == '\n')
        serial_putc('\r');
    while (!(inb(COM1 + 5) & 0x20))
        ;
    outb(COM1, (uint8_t)c);
}

/* --- the VGA text buffer ------------------------------------------------------------------------------ */

#define VGA_COLS 80
#define VGA_ROWS 25
#define ATTR_TEXT   0x07            /* light grey on black */
#define ATTR_LABEL  0x0E            /* yellow */
#define ATTR_TITLE  0x1F            /* white on blue */
#define ATTR_OK     0x0A            /* light green */
#define ATTR_BAD    0x4F            /* white on red */

static volatile uint16_t *const vga = (volatile uint16_t *)0xB8000;
static int row, col;
static uint8_t attr = ATTR_TEXT;

static void vga_cursor(void)
{
    uint16_t pos = (uint16_t)(row * VGA_COLS + col);
    outb(0x3D4, 0x0F);              /* CRTC: cursor location low, then high */
    outb(0x3D5, (uint8_t)(pos & 0xFF));
    outb(0x3D4, 0x0E);
    outb(0x3D5, (uint8_t)(pos >> 8));
}

static void vga_clear(void)
{
    for (int i = 0; i < VGA_COLS * VGA_ROWS; i++)
        vga[i] = (uint16_t)(ATTR_TEXT << 8 | ' ');
    row = col = 0;
}

static void vga_scroll(void)
{
    for (int i = 0; i < VGA_COLS * (VGA_ROWS - 1); i++)
        vga[i] = vga[i + VGA_COLS];
    for (int i = 0; i < VGA_COLS; i++)
        vga[VGA_COLS * (VGA_ROWS - 1) + i] = (uint16_t)(ATTR_TEXT << 8 | ' ');
    row = VGA_ROWS - 1;
}

static void vga_putc(char c)
{
    if (c == '\n') {
        col = 0;
        if (++row == VGA_ROWS)
            vga_scroll();
        return;
    }
    if (c == '\b') {
        if (col > 0) {
            col--;
            vga[row * VGA_COLS + col] = (uint16_t)(ATTR_TEXT << 8 | ' ');
        }
        return;
    }
    vga[row * VGA_COLS + col] = (uint16_t)(attr << 8 | (uint8_t)c);
    if (++col == VGA_COLS) {
        col = 0;
        if (++row == VGA_ROWS)
            vga_scroll();
    }
}

/* --- printing: say() to both, log() to the serial port only -------------------------------------------- */

static void say(const char *s) { for (; *s; s++) { vga_putc(*s); serial_putc(*s); } vga_cursor(); }
static void log(const char *s) { for (; *s; s++) serial_putc(*s); }
static void label(const char *s) { attr = ATTR_LABEL; say(s); attr = ATTR_TEXT; }

static char *fmt_u(char *out, uint64_t v, unsigned base)
{
    char tmp[24];
    int n = 0;
    do { tmp[n++] = "0123456789abcdef"[v % base]; v /= base; } while (v);
    if (base == 16) { *out++ = '0'; *out++ = 'x'; }
    while (n) *out++ = tmp[--n];
    *out = 0;
    return out;
}

static void say_u(uint64_t v) { char b[24]; fmt_u(b, v, 10); say(b); }
static void log_u(uint64_t v) { char b[24]; fmt_u(b, v, 10); log(b); }
static void log_x(uint64_t v) { char b[24]; fmt_u(b, v, 16); log(b); }

static int has_word(const char *s, const char *w)
{
    for (;;) {
        const char *a = s, *b = w;
        while (*b && *a == *b) { a++; b++; }
        if (!*b && (*a == 0 || *a == ' '))
            return 1;
        while (*s && *s != ' ') s++;
        if (!*s) return 0;
        s++;
    }
}

/* --- interrupts: IDT, 8259 PIC, keyboard -------------------------------------------------------------- */

struct idt_entry { uint16_t off_lo, sel, flags, off_hi; } __attribute__((packed));
static struct idt_entry idt[64];
static struct { uint16_t limit; uint32_t base; } __attribute__((packed)) idtr;
static struct { uint16_t limit; uint32_t base; } __attribute__((packed)) gdtr;
static const uint64_t gdt[3] = { 0, 0x00CF9A000000FFFFull, 0x00CF92000000FFFFull };

static void set_gate(int v, void (*fn)(void))
{
    uint32_t a = (uint32_t)fn;
    idt[v] = (struct idt_entry){ (uint16_t)a, 0x08, 0x8E00, (uint16_t)(a >> 16) };
}

static void cpu_tables(void)
{
    /* Our own GDT: the spec leaves GDTR to the OS ("may be invalid"). */
    gdtr.limit = sizeof gdt - 1;
    gdtr.base = (uint32_t)gdt;
    __asm__ volatile("lgdt %0\n\t"
                     "ljmp $0x08, $1f\n1:\n\t"
                     "movw $0x10, %%ax\n\tmovw %%ax, %%ds\n\tmovw %%ax, %%es\n\tmovw %%ax, %%ss\n\t"
                     "movw %%ax, %%fs\n\tmovw %%ax, %%gs" : : "m"(gdtr) : "eax", "memory");
    set_gate(0, isr0); set_gate(6, isr6); set_gate(8, isr8); set_gate(13, isr13); set_gate(14, isr14);
    set_gate(32, isr32); set_gate(33, isr33); set_gate(39, isr39);
    idtr.limit = sizeof idt - 1;
    idtr.base = (uint32_t)idt;
    __asm__ volatile("lidt %0" : : "m"(idtr));
}

static void pic_init(void)
{
    /* ICW1-4: remap IRQ 0-7 to vectors 32-39 and 8-15 to 40-47, 8086 mode; then mask all but IRQ 1. */
    outb(0x20, 0x11); outb(0xA0, 0x11);
    outb(0x21, 0x20); outb(0xA1, 0x28);
    outb(0x21, 0x04); outb(0xA1, 0x02);
    outb(0x21, 0x01); outb(0xA1, 0x01);
    outb(0x21, 0xFD); outb(0xA1, 0xFF);
}

/* Scan code set 1, the codes the i8042 hands over with translation on (the PC default). */
static const char keymap[0x3A] = {
    0, 27, '1', '2', '3', '4', '5', '6', '7', '8', '9', '0', '-', '=', '\b', '\t',
    'q', 'w', 'e', 'r', 't', 'y', 'u', 'i', 'o', 'p', '[', ']', '\n', 0, 'a', 's',
    'd', 'f', 'g', 'h', 'j', 'k', 'l', ';', '\'', '`', 0, '\\', 'z', 'x', 'c', 'v',
    'b', 'n', 'm', ',', '.', '/', 0, '*', 0, ' ',
};
static const char keymap_shift[0x3A] = {
    0, 27, '!', '@', '#', '$', '%', '^', '&', '*', '(', ')', '_', '+', '\b', '\t',
    'Q', 'W', 'E', 'R', 'T', 'Y', 'U', 'I', 'O', 'P', '{', '}', '\n', 0, 'A', 'S',
    'D', 'F', 'G', 'H', 'J', 'K', 'L', ':', '"', '~', 0, '|', 'Z', 'X', 'C', 'V',
    'B', 'N', 'M', '<', '>', '?', 0, '*', 0, ' ',
};
static int shift, extended;
static uint32_t keys;

static void prompt(void) { label("keyboard> "); }

static void keyboard_irq(void)
{
    uint8_t sc = inb(0x60);
    log("toy: scancode "); log_x(sc); log("\n");
    if (sc == 0xE0) { extended = 1; return; }
    int ext = extended;
    extended = 0;
    if (ext)
        return;                     /* arrows and the like: not typed */
    if (sc == 0x2A || sc == 0x36) { shift = 1; return; }
    if (sc == 0xAA || sc == 0xB6) { shift = 0; return; }
    if (sc & 0x80 || sc >= sizeof keymap)
        return;                     /* a break code, or a key with no character */
    char c = (shift ? keymap_shift : keymap)[sc];
    if (!c || c == 27)
        return;
    keys++;
    if (c == '\n') {
        say("\n");
        prompt();
        return;
    }
    if (c == '\b' && col <= 10)
        return;                     /* not into the prompt */
    char s[2] = { c, 0 };
    say(s);
}

void isr_handler(uint32_t vector)
{
    if (vector == 33) {
        keyboard_irq();
        outb(0x20, 0x20);           /* EOI to the master PIC */
        return;
    }
    if (vector == 32 || vector == 39)
        return;                     /* a timer tick, or the PIC's spurious IRQ 7: nothing to do */
    attr = ATTR_BAD;
    say("\nexception ");
    say_u(vector);
    say("\n");
    outl(0xF4, 2);
    for (;;)
        __asm__ volatile("cli; hlt");
}

/* --- the boot information ---------------------------------------------------------------------------- */

static void show_module(uint32_t i, const struct multiboot_mod_list *m)
{
    say("  ");
    say_u(i);
    say(": ");
    say((const char *)m->cmdline);
    say(" (");
    say_u(m->mod_end - m->mod_start);
    say(" bytes) \"");
    const uint8_t *p = (const uint8_t *)m->mod_start;
    for (uint32_t n = 0; n < m->mod_end - m->mod_start && n < 40; n++) {
        char s[2] = { (p[n] >= 0x20 && p[n] < 0x7F) ? (char)p[n] : '.', 0 };
        say(s);
    }
    say("\"\n");
    log("toy: module "); log_u(i); log(" at "); log_x(m->mod_start); log("-"); log_x(m->mod_end);
    log(m->mod_start & 0xFFF ? " (not page-aligned)\n" : " (page-aligned)\n");
}

static const char *show_info(uint32_t magic, const struct multiboot_info *mbi)
{
    uint32_t hflags = multiboot_header[1];
    label("boot: ");
    say(magic == MULTIBOOT_BOOTLOADER_MAGIC ? "Multiboot, magic 0x2badb002" : "not Multiboot: bad magic");
    say(hflags & MULTIBOOT_AOUT_KLUDGE ? ", a.out kludge (flag 16)\n" : ", ELF32\n");
    log("toy: info at "); log_x((uint32_t)mbi); log(", flags "); log_x(mbi->flags); log("\n");
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC)
        return "";
    if (mbi->flags & INFO_LOADER) {
        log("toy: boot loader "); log((const char *)mbi->boot_loader_name); log("\n");
    }
    if (mbi->flags & INFO_MEMORY) {
        /* mem_upper counts from 1 MiB to the first hole; a BIOS keeps a little at the top for itself,
           so round up to whole MiB for the screen. */
        uint32_t kib = mbi->mem_upper + 1024;
        label("memory: ");
        say_u((kib + 1023) / 1024);
        say(" MiB\n");
        log("toy: mem_lower "); log_u(mbi->mem_lower); log(" KiB, mem_upper "); log_u(mbi->mem_upper);
        log(" KiB\n");
    }
    if (mbi->flags & INFO_MMAP) {
        const uint8_t *p = (const uint8_t *)mbi->mmap_addr, *end = p + mbi->mmap_length;
        while (p < end) {
            const struct multiboot_mmap_entry *e = (const void *)p;
            log("toy: mmap "); log_x(e->addr); log("-"); log_x(e->addr + e->len); log(" type "); log_u(e->type);
            log("\n");
            p += e->size + 4;
        }
    }
    const char *cmdline = "";
    if (mbi->flags & INFO_CMDLINE) {
        cmdline = (const char *)mbi->cmdline;
        label("cmdline: ");
        say(cmdline);
        say("\n");
    }
    if (mbi->flags & INFO_MODS) {
        label("modules: ");
        say_u(mbi->mods_count);
        say("\n");
        const struct multiboot_mod_list *mods = (const void *)mbi->mods_addr;
        for (uint32_t i = 0; i < mbi->mods_count; i++)
            show_module(i, &mods[i]);
    }
    say("\n");
    if (has_word(cmdline, "exit")) {
        log("toy: exit requested on the command line\n");
        outl(0xF4, 0);              /* pyvmm (and QEMU's isa-debug-exit) end the VM here */
    }
    return cmdline;
}

void kmain(uint32_t magic, const struct multiboot_info *mbi)
{
    serial_init();
    vga_clear();
    attr = ATTR_TITLE;
    say(" pyvmm toy kernel                                                               ");  /* a whole row */
    attr = ATTR_TEXT;
    say("\n");
    const char *cmdline = show_info(magic, mbi);
    cpu_tables();
    pic_init();
    while (inb(0x64) & 1)
        (void)inb(0x60);            /* whatever the controller held before we listened */
    prompt();
    if (has_word(cmdline, "poll")) {
        /* "poll" on the command line: read the controller's status instead of taking IRQ 1 (for a
           host that cannot return from an interrupt in 32-bit code; see docs/toy-kernels.md). */
        log("\ntoy: ready for keys (polling)\n");
        for (;;)
            if (inb(0x64) & 1)
                keyboard_irq();
    }
    log("\ntoy: ready for keys\n");
    __asm__ volatile("sti");
    for (;;)
        __asm__ volatile("hlt");
}
