/* start.S: the PVH entry (32-bit protected mode, paging off) up to long mode, and the interrupt stubs. */

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define MSR_EFER        0xc0000080
#define EFER_LME        (1 << 8)
#define CR4_PAE         (1 << 5)
#define CR0_PE          (1 << 0)
#define CR0_PG          (1 << 31)
#define CR0_CD_NW       (3 << 29)
#define SEL_CODE64      0x08
#define SEL_DATA        0x10
#define SEL_CODE32      0x18
#define PTE_PRESENT_RW  0x03
#define PDE_2M          0x83            /* present, writable, page size */
#define PDE_UNCACHED    0x18            /* PWT | PCD: the MMIO hole above 3 GiB */
#define BOOT_STACK_SIZE 16384

/* Xen ELF note carrying the 32-bit physical entry (Xen's public/elfnote.h, PVH boot ABI).  The
   descriptor is 8 bytes in a 64-bit ELF, as Linux emits it and as QEMU's PVH loader reads it;
   its low 4 bytes are the 32-bit entry address, so readers of a 4-byte field see the same value. */
	.section .note.Xen, "a", @note
	.balign 4
	.long 2f - 1f
	.long 4f - 3f
	.long XEN_ELFNOTE_PHYS32_ENTRY
1:	.asciz "Xen"
2:	.balign 4
3:	.quad pvh_entry
4:	.balign 4

	.section .text.boot, "ax"
	.code32
	.globl pvh_entry
pvh_entry:
	cli
	cld
	/* EBX = physical address of struct hvm_start_info; keep it before anything clobbers EBX. */
	movl %ebx, boot_start_info
	/* Our own GDT: the loader's may be anywhere, and is not promised to survive. */
	lgdt gdt_ptr
	ljmp $SEL_CODE32, $1f
1:	movl $SEL_DATA, %eax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movw %ax, %fs
	movw %ax, %gs
	movl $boot_stack_top, %esp

	/* Identity map the first 4 GiB with 2 MiB pages: RAM below 3 GiB, the virtio-mmio windows,
	   IOAPIC and LAPIC above it.  PML4 and PDPT are contiguous: clear both at once. */
	movl $pml4, %edi
	xorl %eax, %eax
	movl $2048, %ecx
	rep stosl
	movl $pdpt, %eax
	orl $PTE_PRESENT_RW, %eax
	movl %eax, pml4
	movl $pd, %eax
	orl $PTE_PRESENT_RW, %eax
	xorl %ecx, %ecx
2:	movl %eax, pdpt(,%ecx,8)
	addl $4096, %eax
	incl %ecx
	cmpl $4, %ecx
	jb 2b
	movl $pd, %edi
	xorl %ecx, %ecx
3:	movl %ecx, %eax
	shll $21, %eax
	orl $PDE_2M, %eax
	cmpl $1536, %ecx                /* 1536 * 2 MiB = 3 GiB: start of the MMIO hole */
	jb 4f
	orl $PDE_UNCACHED, %eax
4:	movl %eax, (%edi,%ecx,8)
	movl $0, 4(%edi,%ecx,8)
	incl %ecx
	cmpl $2048, %ecx
	jb 3b

	/* Long mode: PAE, CR3, EFER.LME, then paging (AMD64 APM vol. 2, "Enabling Long Mode"). */
	movl %cr4, %eax
	orl $CR4_PAE, %eax
	movl %eax, %cr4
	movl $pml4, %eax
	movl %eax, %cr3
	movl $MSR_EFER, %ecx
	rdmsr
	orl $EFER_LME, %eax
	wrmsr
	movl %cr0, %eax
	andl $~CR0_CD_NW, %eax
	orl $(CR0_PG | CR0_PE), %eax
	movl %eax, %cr0
	ljmp $SEL_CODE64, $long_entry

	.code64
long_entry:
	movl $SEL_DATA, %eax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	xorl %eax, %eax
	movw %ax, %fs
	movw %ax, %gs
	movq $boot_stack_top, %rsp
	/* Clear .bss (the page tables live outside it). */
	movq $__bss_start, %rdi
	movq $__bss_end, %rcx
	subq %rdi, %rcx
	shrq $3, %rcx
	xorl %eax, %eax
	rep stosq
	movl boot_start_info(%rip), %edi
	xorl %ebp, %ebp
	call kmain
5:	cli
	hlt
	jmp 5b

/* Interrupt and exception entry: every stub pushes (error code or 0, vector), then the common path
   saves the general registers and hands a struct frame to isr_dispatch(). */
	.text
	.macro ISR_NOERR vec
	.balign 16
isr_\vec:
	pushq $0
	pushq $\vec
	jmp isr_common
	.endm
	.macro ISR_ERR vec
	.balign 16
isr_\vec:
	pushq $\vec
	jmp isr_common
	.endm

	/* Exceptions that push an error code: #DF 8, #TS 10, #NP 11, #SS 12, #GP 13, #PF 14, #AC 17,
	   #CP 21, #VC 29, #SX 30 (Intel SDM vol. 3, table 6-1). */
	.irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
	ISR_NOERR \v
	.endr
	.irp v, 8,10,11,12,13,14,17,21,29,30
	ISR_ERR \v
	.endr
	/* 32..71: IOAPIC pins 0..23 use 48..71; 240: LAPIC timer; 255: spurious. */
	.irp v, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,240,255
	ISR_NOERR \v
	.endr

isr_common:
	pushq %rax
	pushq %rcx
	pushq %rdx
	pushq %rbx
	pushq %rbp
	pushq %rsi
	pushq %rdi
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	cld
	movq %rsp, %rdi
	call isr_dispatch
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rdi
	popq %rsi
	popq %rbp
	popq %rbx
	popq %rdx
	popq %rcx
	popq %rax
	addq $16, %rsp
	iretq

	.section .rodata
	.balign 8
	.globl isr_stub_table
	/* isr_stub_table[i] = stub for vector i, 0 where there is none. */
isr_stub_table:
	.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.quad isr_\v
	.endr
	.irp v, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71
	.quad isr_\v
	.endr
	.globl isr_stub_spurious, isr_stub_timer
isr_stub_spurious:
	.quad isr_255
isr_stub_timer:
	.quad isr_240

	.data
	.balign 16
gdt:
	.quad 0
	.quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
	.quad 0x00cf92000000ffff        /* 0x10: flat data */
	.quad 0x00cf9a000000ffff        /* 0x18: flat 32-bit code */
gdt_end:
	.balign 8
gdt_ptr:
	.word gdt_end - gdt - 1
	.quad gdt
	.globl boot_start_info
	.balign 8
boot_start_info:
	.quad 0

	.section .pagetables, "aw", @nobits
	.balign 4096
	.globl pml4, pdpt, pd
pml4:	.skip 4096
pdpt:	.skip 4096
pd:	.skip 4 * 4096
	.balign 16
boot_stack:
	.skip BOOT_STACK_SIZE
	.globl boot_stack_top
boot_stack_top:
