/*
 * The toy kernel's entry: a Multiboot v1 header (Multiboot Specification 0.6.96, 3.1 "OS image format"),
 * a boot stack, and the interrupt stubs. Built twice: as an ELF32 loaded by its program headers, and with
 * -DAOUT_KLUDGE as a flat binary whose header carries the load addresses (flag 16, "the a.out kludge").
 */

#define MULTIBOOT_HEADER_MAGIC  0x1BADB002
#define MULTIBOOT_PAGE_ALIGN    0x00000001
#define MULTIBOOT_MEMORY_INFO   0x00000002
#define MULTIBOOT_AOUT_KLUDGE   0x00010000

#ifdef AOUT_KLUDGE
#define MB_FLAGS (MULTIBOOT_PAGE_ALIGN | MULTIBOOT_MEMORY_INFO | MULTIBOOT_AOUT_KLUDGE)
#else
#define MB_FLAGS (MULTIBOOT_PAGE_ALIGN | MULTIBOOT_MEMORY_INFO)
#endif

    .section .multiboot, "a"
    .p2align 2
    .globl multiboot_header
multiboot_header:
    .long MULTIBOOT_HEADER_MAGIC
    .long MB_FLAGS
    .long -(MULTIBOOT_HEADER_MAGIC + MB_FLAGS)
#ifdef AOUT_KLUDGE
    .long multiboot_header          /* header_addr */
    .long __load_start              /* load_addr: the start of the text */
    .long __load_end                /* load_end_addr: the end of the data */
    .long __bss_end                 /* bss_end_addr */
    .long _start                    /* entry_addr */
#endif

    .text
    .code32
    .globl _start
_start:
    /* EAX = 0x2BADB002, EBX = multiboot_info; interrupts are off and there is no stack yet. */
    movl $boot_stack_top, %esp
    pushl $0                        /* a null return address ends backtraces */
    pushl %ebx
    pushl %eax
    call kmain
1:  cli
    hlt
    jmp 1b

/* Interrupt stubs: push the vector and jump to the common path, which calls isr_handler(vector). */
.macro isr vector
    .globl isr\vector
isr\vector:
    pushl $\vector
    jmp isr_common
.endm

    isr 0
    isr 6
    isr 8
    isr 13
    isr 14
    isr 32
    isr 33
    isr 39

isr_common:
    pushal
    cld
    pushl 32(%esp)                  /* the vector, above the eight registers pushal saved */
    call isr_handler
    addl $4, %esp
    popal
    addl $4, %esp                   /* the vector; exceptions with an error code never return */
    iret

    .bss
    .p2align 4
boot_stack:
    .skip 16384
boot_stack_top:
