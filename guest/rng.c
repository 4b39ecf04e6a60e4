/* rng.c: a virtio-rng driver (spec "Entropy Device") and scenario=rng.

   The device has one queue, requestq, and no features or config: the driver posts device-writable
   buffers and the device gives each back filled with random bytes (the used length says how many).
   scenario=rng reads rng_bytes (default 64) in buffers of rng_chunk (default 16) bytes, checks they
   are not all equal, and, given rng_seed=N, that they are splitmix64's stream from N (the host's
   -device virtio-rng-device,seed=N).  rng_id=ID drives another device the same way (a user device). */
#include "virtio.h"

#define RNG_MAX_BYTES 4096
#define RNG_MAX_CHUNK 256

/* Two pages from the allocator (not .bss, so other scenarios' memory is as it was): what was read, and
   the buffer the device writes into. */
static u8 *rng_data, *rng_buf;

static u64 splitmix64(u64 *state)
{
    u64 z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static int rng_fail(const char *why)
{
    extern const char *fail_reason;
    fail_reason = why;
    return EXIT_FAIL;
}

/* One buffer of len bytes to the device; how many it filled, or -1 (needs reset / timeout). */
static int rng_request(struct virtio_dev *d, struct virtq *vq, u32 len)
{
    struct vq_buf buf = {(u64)(uintptr_t)rng_buf, len, true};
    if (vq_add(vq, &buf, 1) < 0)
        return -1;
    vq_kick(vq);
    while (!vq_has_used(vq)) {
        u64 seen = d->irq_count;
        if (vq_has_used(vq))
            break;
        if (virtio_status(d) & DEVICE_NEEDS_RESET) {
            printf("rng: the device set DEVICE_NEEDS_RESET (status %#x)\n", virtio_status(d));
            return -1;
        }
        if (!wait_until_changed(&d->irq_count, seen, virtio_timeout_ticks)) {
            printf("rng: no answer from the device (status %#x)\n", virtio_status(d));
            return -1;
        }
    }
    u32 got = 0;
    vq_get_used(vq, &got);
    return (int)MIN(got, len);
}

int scenario_rng(void)
{
    struct virtio_dev dev;
    u32 id = (u32)cmdline_u64("rng_id", VIRTIO_ID_RNG);
    u64 want = MIN(cmdline_u64("rng_bytes", 64), (u64)RNG_MAX_BYTES);
    u32 chunk = (u32)MIN(MAX(cmdline_u64("rng_chunk", 16), 1ULL), (u64)RNG_MAX_CHUNK);
    if (!virtio_find(id, &dev)) {
        printf("rng: no virtio-mmio device with DeviceID %u on the command line\n", id);
        return rng_fail("no rng device");
    }
    if (!virtio_attach_irq(&dev) || !virtio_begin(&dev) || !virtio_negotiate(&dev, 0))
        return rng_fail("rng handshake");
    if (!vq_setup(&dev, 0, 8))
        return rng_fail("rng requestq");
    if (!virtio_driver_ok(&dev))
        return rng_fail("rng DRIVER_OK refused");
    rng_data = (u8 *)(uintptr_t)alloc_page();
    rng_buf = (u8 *)(uintptr_t)alloc_page();
    if (!rng_data || !rng_buf)
        return rng_fail("no memory for buffers");
    struct virtq *vq = &dev.vqs[0];
    printf("rng: device %u version %u at %#llx irq %u, requestq size %u\n", id, dev.version, dev.base, dev.irq,
           vq->size);

    u64 have = 0, buffers = 0, empty = 0;
    while (have < want) {
        u32 len = (u32)MIN((u64)chunk, want - have);
        int got = rng_request(&dev, vq, len);
        if (got < 0)
            return rng_fail("device error");
        buffers++;
        if (got == 0 && ++empty > 1000)
            return rng_fail("the device gives no bytes");
        memcpy(rng_data + have, rng_buf, (size_t)got);
        have += (u64)got;
    }
    printf("rng: %llu bytes in %llu buffers:", have, buffers);
    for (u64 i = 0; i < MIN(have, 32ULL); i++)
        printf(" %02x", rng_data[i]);
    printf("\n");

    bool all_equal = true;
    for (u64 i = 1; i < have; i++)
        if (rng_data[i] != rng_data[0])
            all_equal = false;
    if (all_equal && have > 1)
        return rng_fail("all bytes equal");

    char seed_text[32];
    if (cmdline_get(cmdline, "rng_seed", seed_text, sizeof(seed_text))) {
        u64 state = cmdline_u64("rng_seed", 0), word = 0;
        for (u64 i = 0; i < have; i++) {
            if (i % 8 == 0)
                word = splitmix64(&state);
            if (rng_data[i] != (u8)(word >> (8 * (i % 8)))) {
                printf("rng: byte %llu is %02x, splitmix64 from seed %s gives %02x\n", i, rng_data[i], seed_text,
                       (u8)(word >> (8 * (i % 8))));
                return rng_fail("bytes differ from the seeded stream");
            }
        }
        printf("rng: the bytes are splitmix64's stream from seed %s\n", seed_text);
    }
    virtio_reset(&dev);
    return EXIT_PASS;
}
