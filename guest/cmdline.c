/* cmdline.c: the kernel command line: `key=value` lookup, numbers with size suffixes, virtio_mmio.device. */
#include "kernel.h"

char cmdline[CMDLINE_MAX];

void cmdline_set(const char *src)
{
    size_t i = 0;
    if (src)
        for (; src[i] && i < CMDLINE_MAX - 1; i++)
            cmdline[i] = src[i];
    cmdline[i] = '\0';
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

bool cmdline_get_nth(const char *line, const char *key, unsigned index, char *buf, size_t size)
{
    size_t klen = strlen(key);
    const char *p = line;
    while (*p) {
        while (is_space(*p))
            p++;
        const char *tok = p;
        while (*p && !is_space(*p))
            p++;
        size_t tlen = (size_t)(p - tok);
        if (tlen > klen && tok[klen] == '=' && strncmp(tok, key, klen) == 0) {
            if (index-- == 0) {
                size_t vlen = tlen - klen - 1;
                if (vlen >= size)
                    vlen = size - 1;
                memcpy(buf, tok + klen + 1, vlen);
                buf[vlen] = '\0';
                return true;
            }
        } else if (tlen == klen && strncmp(tok, key, klen) == 0) {
            if (index-- == 0) { /* a bare key: empty value */
                buf[0] = '\0';
                return true;
            }
        }
    }
    return false;
}

bool cmdline_get(const char *line, const char *key, char *buf, size_t size)
{
    /* The last occurrence wins, as for Linux's parameters. */
    unsigned n = 0;
    while (cmdline_get_nth(line, key, n, buf, size))
        n++;
    return n && cmdline_get_nth(line, key, n - 1, buf, size);
}

bool parse_u64(const char *s, u64 *out, const char **end)
{
    u64 v = 0;
    unsigned base = 10;
    const char *p = s;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        base = 16;
        p += 2;
    }
    const char *digits = p;
    for (;; p++) {
        unsigned d;
        if (*p >= '0' && *p <= '9')
            d = (unsigned)(*p - '0');
        else if (base == 16 && *p >= 'a' && *p <= 'f')
            d = (unsigned)(*p - 'a' + 10);
        else if (base == 16 && *p >= 'A' && *p <= 'F')
            d = (unsigned)(*p - 'A' + 10);
        else
            break;
        v = v * base + d;
    }
    if (p == digits)
        return false;
    *out = v;
    if (end)
        *end = p;
    return true;
}

bool parse_size(const char *s, u64 *out)
{
    const char *end;
    u64 v;
    if (!parse_u64(s, &v, &end))
        return false;
    switch (*end) {
    case 'k': case 'K': v <<= 10; end++; break;
    case 'm': case 'M': v <<= 20; end++; break;
    case 'g': case 'G': v <<= 30; end++; break;
    default: break;
    }
    if (*end)
        return false;
    *out = v;
    return true;
}

u64 cmdline_u64(const char *key, u64 dflt)
{
    char buf[32];
    u64 v;
    if (cmdline_get(cmdline, key, buf, sizeof(buf)) && parse_size(buf, &v))
        return v;
    return dflt;
}

bool parse_virtio_mmio_device(const char *s, struct mmio_dev_param *out)
{
    const char *p;
    u64 size, base, irq;
    if (!parse_u64(s, &size, &p))
        return false;
    switch (*p) { /* Linux's memparse suffixes */
    case 'k': case 'K': size <<= 10; p++; break;
    case 'm': case 'M': size <<= 20; p++; break;
    default: break;
    }
    if (*p++ != '@' || !parse_u64(p, &base, &p) || *p++ != ':' || !parse_u64(p, &irq, &p))
        return false;
    if (*p && *p != ':')
        return false;
    if (irq == 0 || size == 0) /* Linux rejects irq 0 as well */
        return false;
    out->size = size;
    out->base = base;
    out->irq = (u32)irq;
    return true;
}
