/* printf.c: formatted output (a freestanding subset of C99 printf) and the string helpers gcc expects. */
#include "kernel.h"

void *memset(void *dst, int c, size_t n)
{
    u8 *d = dst;
    if (!((uintptr_t)d & 7)) {
        u64 v = 0x0101010101010101ULL * (u8)c;
        for (; n >= 8; n -= 8, d += 8)
            *(u64 *)d = v;
    }
    while (n--)
        *d++ = (u8)c;
    return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    u8 *d = dst;
    const u8 *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const u8 *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x - *y;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return (u8)*a - (u8)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (u8)*a - (u8)*b;
        if (!*a)
            return 0;
    }
    return 0;
}

struct out {
    char *buf;
    size_t size, len;
    bool console;
};

static void put(struct out *o, char c)
{
    if (o->console)
        uart_putc(c);
    else if (o->len + 1 < o->size)
        o->buf[o->len] = c;
    o->len++;
}

static void put_num(struct out *o, u64 v, unsigned base, bool neg, int width, bool zero, bool upper,
                    const char *prefix)
{
    char tmp[24];
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    int n = 0;
    do {
        tmp[n++] = digits[v % base];
        v /= base;
    } while (v);
    int plen = (int)strlen(prefix) + (neg ? 1 : 0);
    int pad = width - n - plen;
    if (!zero)
        for (; pad > 0; pad--)
            put(o, ' ');
    if (neg)
        put(o, '-');
    for (; *prefix; prefix++)
        put(o, *prefix);
    if (zero)
        for (; pad > 0; pad--)
            put(o, '0');
    while (n)
        put(o, tmp[--n]);
}

/* Supports %d %i %u %x %X %p %s %c %%, flags '0' '#' '-', a width, and the l/ll/z length modifiers. */
static int format(struct out *o, const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            put(o, *fmt);
            continue;
        }
        fmt++;
        bool zero = false, alt = false, left = false;
        for (;; fmt++) {
            if (*fmt == '0')
                zero = true;
            else if (*fmt == '#')
                alt = true;
            else if (*fmt == '-')
                left = true;
            else
                break;
        }
        int width = 0;
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        int lng = 0;
        while (*fmt == 'l' || *fmt == 'z') {
            lng++;
            fmt++;
        }
        u64 v;
        switch (*fmt) {
        case 'd':
        case 'i': {
            s64 sv = lng ? va_arg(ap, long long) : va_arg(ap, int);
            put_num(o, sv < 0 ? (u64)-sv : (u64)sv, 10, sv < 0, width, zero, false, "");
            break;
        }
        case 'u':
            v = lng ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned);
            put_num(o, v, 10, false, width, zero, false, "");
            break;
        case 'x':
        case 'X':
            v = lng ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned);
            put_num(o, v, 16, false, width, zero, *fmt == 'X', alt ? "0x" : "");
            break;
        case 'p':
            put_num(o, (u64)(uintptr_t)va_arg(ap, void *), 16, false, width, zero, false, "0x");
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            int pad = width - (int)strlen(s);
            if (!left)
                for (; pad > 0; pad--)
                    put(o, ' ');
            for (; *s; s++)
                put(o, *s);
            if (left)
                for (; pad > 0; pad--)
                    put(o, ' ');
            break;
        }
        case 'c':
            put(o, (char)va_arg(ap, int));
            break;
        case '%':
            put(o, '%');
            break;
        case '\0':
            return (int)o->len;
        default:
            put(o, '%');
            put(o, *fmt);
        }
    }
    return (int)o->len;
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct out o = {buf, size, 0, false};
    int n = format(&o, fmt, ap);
    if (size)
        buf[o.len < size ? o.len : size - 1] = '\0';
    return n;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

int printf(const char *fmt, ...)
{
    struct out o = {NULL, 0, 0, true};
    va_list ap;
    va_start(ap, fmt);
    int n = format(&o, fmt, ap);
    va_end(ap);
    return n;
}
