/*
 * pyvmm boot ROM: from the x86 reset vector, in real mode, to the guest's 32-bit entry (PVH or Multiboot).
 *
 * The ROM is 64 KiB, mapped read-only at 0xFFFF0000-0xFFFFFFFF. At reset the vCPU has CS.selector 0xF000,
 * CS.base 0xFFFF0000 and IP 0xFFF0 (Intel SDM vol. 3, "Processor State After Reset"), so its first
 * instruction is fetched from 0xFFFFFFF0, the last 16 bytes of the ROM. Every 16-bit offset below is an
 * offset in that 64 KiB code segment, and every 32-bit address is the linear address 0xFFFFxxxx.
 *
 * Stages are written to the PC's POST port (0x80) so the VMM can trace the boot; the codes are named in
 * pyvmm/loader/firmware.py (BOOT_STAGES) and docs/firmware.md.
 *
 * The ROM never writes memory: the GDT descriptors have their Accessed bit preset, because a CPU
 * loading a segment whose descriptor lacks it writes the bit back into the GDT, which here is read-only.
 */

#define POST_PORT           0x80

#define STAGE_RESET         0x01
#define STAGE_GDT_LOADED    0x02
#define STAGE_PROTECTED     0x03
#define STAGE_INFO_CHECKED  0x04
#define STAGE_JUMP_ENTRY    0x05
#define ERROR_NO_HANDOFF    0xE1
#define ERROR_BAD_MAGIC     0xE2
#define ERROR_BAD_PROTOCOL  0xE3

#define HVM_START_MAGIC     0x336ec578      /* hvm_start_info.magic, xen/include/public/arch-x86/hvm/start_info.h */
#define MULTIBOOT_MAGIC     0x2badb002      /* EAX at a Multiboot entry (Multiboot Specification 0.6.96, 3.2) */
#define HANDOFF_MAGIC       0x4d565950      /* the bytes "PYVM" */
#define HANDOFF_VERSION     2

#define CR0_PE              0x00000001
#define CR0_ET              0x00000010      /* reads as 1 on every CPU since the 486; kept set */

#define SEL_CODE32          0x08
#define SEL_DATA32          0x10

#define ROM_OFFSET(sym)     ((sym) - rom_start)

    .section .rom.text, "ax"
    .globl rom_start
rom_start:

/* ---------------------------------------------------------------- hand-off block, filled by pyvmm */
    .balign 16
    .globl handoff
handoff:
    .globl handoff_magic
handoff_magic:
    .long HANDOFF_MAGIC
    .globl handoff_version
handoff_version:
    .long HANDOFF_VERSION
    .globl kernel_entry
kernel_entry:               /* guest-physical 32-bit entry: the PVH note's, or the Multiboot kernel's */
    .long 0
    .globl boot_info
boot_info:                  /* guest-physical address of the hvm_start_info or multiboot_info pyvmm built */
    .long 0
    .globl boot_magic
boot_magic:                 /* the protocol: 0 for PVH, MULTIBOOT_MAGIC for Multiboot (it goes in EAX) */
    .long 0

/* ---------------------------------------------------------------- GDT, in the ROM */
    .balign 8
    .globl gdt
gdt:
    .quad 0                             /* 0x00: the null descriptor */
#ifdef BAD_GDT
    /* Test variant: the code descriptor is not present (P=0), so the far jump into protected mode
       raises #NP; with the IDT limit at 0 that becomes #GP, #DF and a triple fault. */
    .quad 0x00cf1b000000ffff            /* 0x08: as below, but P=0 */
#else
    .quad 0x00cf9b000000ffff            /* 0x08: code, base 0, limit 4 GiB, 32-bit, execute/read, accessed */
#endif
    .quad 0x00cf93000000ffff            /* 0x10: data, base 0, limit 4 GiB, 32-bit, read/write, accessed */
gdt_end:

    .balign 8
gdtr:                                   /* operand for a 32-bit lgdt: the base is the full linear address */
    .word gdt_end - gdt - 1
    .long gdt
    .balign 8
null_idtr:                              /* limit 0: any exception before the guest has an IDT triple-faults */
    .word 0
    .long 0

/* ---------------------------------------------------------------- real mode */
    .code16
    .globl real_mode_start
real_mode_start:
    cli
    cld
    movb $STAGE_RESET, %al
    outb %al, $POST_PORT

    /* DS is still 0 (base 0) after reset, so address the ROM through CS; the 0x66 prefix (lgdtl) makes
       lgdt take a 32-bit base, without which the top byte of 0xFFFFxxxx would be dropped. */
    lidtl %cs:ROM_OFFSET(null_idtr)
    lgdtl %cs:ROM_OFFSET(gdtr)
    movb $STAGE_GDT_LOADED, %al
    outb %al, $POST_PORT

    /* PVH: "cr0: bit 0 (PE) must be set. All the other writeable bits are cleared." This also clears
       CD and NW, which are set at reset. */
    movl $(CR0_PE | CR0_ET), %eax
    movl %eax, %cr0
    /* A far jump with a 32-bit offset (0x66 0xEA) loads CS from the GDT and leaves 16-bit code. */
    ljmpl $SEL_CODE32, $protected_mode

/* ---------------------------------------------------------------- 32-bit protected mode */
    .code32
    .globl protected_mode
protected_mode:
    movw $SEL_DATA32, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movb $STAGE_PROTECTED, %al
    outb %al, $POST_PORT

    movl boot_info, %ebx
    movl kernel_entry, %ecx
    movl boot_magic, %edx
    testl %ebx, %ebx
    jz no_handoff
    testl %ecx, %ecx
    jz no_handoff
    testl %edx, %edx
    jnz 1f
    /* PVH: the start info carries a magic the ROM can check. */
    cmpl $HVM_START_MAGIC, (%ebx)
    jne bad_magic
    jmp 2f
1:  /* Multiboot: multiboot_info has no magic of its own; the protocol word must be Multiboot's. */
    cmpl $MULTIBOOT_MAGIC, %edx
    jne bad_protocol
2:  movb $STAGE_INFO_CHECKED, %al
    outb %al, $POST_PORT

    /* The entry state both protocols ask for: EBX = boot information; 32-bit flat CS/DS/ES/SS; paging
       off; CR4 is 0 from reset; EFLAGS has IF, TF and VM clear (only cli ran; reset value 0x2). A20 is
       always on under KVM. EAX is 0 for PVH and 0x2BADB002 for Multiboot (its 3.2 "Machine state"). */
    movb $STAGE_JUMP_ENTRY, %al
    outb %al, $POST_PORT
    movl %edx, %eax
    xorl %edx, %edx
    xorl %esi, %esi
    xorl %edi, %edi
    xorl %ebp, %ebp
    xorl %esp, %esp
    jmp *%ecx

no_handoff:
    movb $ERROR_NO_HANDOFF, %al
    jmp halt_with_code
bad_magic:
    movb $ERROR_BAD_MAGIC, %al
    jmp halt_with_code
bad_protocol:
    movb $ERROR_BAD_PROTOCOL, %al
halt_with_code:
    outb %al, $POST_PORT
    /* Interrupts stay off, so this sleeps for good; the VMM is expected to stop on an 0xEx code. */
1:  hlt
    jmp 1b

/* ---------------------------------------------------------------- reset vector: 0xFFFFFFF0 */
    .section .rom.reset, "ax"
    .code16
    .globl reset_vector
reset_vector:
    /* A near jump: CS.base is 0xFFFF0000, so any offset in the ROM is in reach of IP. */
    jmp real_mode_start
    .balign 16, 0xf4                    /* fill the rest of the 16 bytes with hlt */
