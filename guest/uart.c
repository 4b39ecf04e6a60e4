/* uart.c: polled output on the 16550 UART at 0x3f8, and the exit device at port 0xf4. */
#include "kernel.h"

#define COM1 0x3f8
#define UART_THR 0
#define UART_IER 1
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define UART_DLL 0
#define UART_DLM 1
#define LSR_THRE 0x20
#define LCR_DLAB 0x80
#define LCR_8N1 0x03
#define EXIT_PORT 0xf4

void uart_init(void)
{
    outb(COM1 + UART_IER, 0x00);          /* polled: no UART interrupts */
    outb(COM1 + UART_LCR, LCR_DLAB);
    outb(COM1 + UART_DLL, 1);             /* 115200 baud */
    outb(COM1 + UART_DLM, 0);
    outb(COM1 + UART_LCR, LCR_8N1);
    outb(COM1 + UART_FCR, 0x07);          /* enable and clear FIFOs */
    outb(COM1 + UART_MCR, 0x03);          /* DTR | RTS */
}

void uart_putc(char c)
{
    if (c == '\n')
        uart_putc('\r');
    /* Bounded wait: a UART that never reports THRE must not hang the guest. */
    for (int i = 0; i < 100000 && !(inb(COM1 + UART_LSR) & LSR_THRE); i++)
        ;
    outb(COM1 + UART_THR, (u8)c);
}

void guest_exit(u32 code)
{
    outl(EXIT_PORT, code);
    /* Without an exit device, stop here for good. */
    for (;;)
        __asm__ __volatile__("cli; hlt");
}
