/* virtio_mmio.c: the virtio-mmio transport as Linux's virtio_mmio drives it: probe, handshake, config, IRQ. */
#include "virtio.h"

u64 virtio_timeout_ticks = 60 * TIMER_HZ;
#define SPURIOUS_LIMIT 1000

bool virtio_find(u32 device_id, struct virtio_dev *out)
{
    char param[96];
    struct mmio_dev_param p;
    for (unsigned i = 0; cmdline_get_nth(cmdline, "virtio_mmio.device", i, param, sizeof(param)); i++) {
        if (!parse_virtio_mmio_device(param, &p)) {
            printf("virtio-mmio: cannot parse \"%s\"\n", param);
            continue;
        }
        if (p.base + p.size > 0x100000000ULL || p.size < Config) {
            printf("virtio-mmio: window %#llx+%#llx not usable\n", p.base, p.size);
            continue;
        }
        u32 magic = mmio_read32(p.base + MagicValue);
        u32 version = mmio_read32(p.base + Version);
        u32 id = mmio_read32(p.base + DeviceID);
        if (magic != VIRTIO_MMIO_MAGIC || (version != 1 && version != 2)) {
            printf("virtio-mmio: %#llx: bad magic %#x or version %u\n", p.base, magic, version);
            continue;
        }
        if (id == 0) /* a placeholder slot: ignored silently, as Linux does */
            continue;
        printf("virtio-mmio: %#llx irq %u version %u device %u vendor %#x\n", p.base, p.irq, version, id,
               mmio_read32(p.base + VendorID));
        if (id == device_id) {
            memset(out, 0, sizeof(*out));
            out->base = p.base;
            out->irq = p.irq;
            out->version = version;
            out->device_id = id;
            return true;
        }
    }
    return false;
}

u32 virtio_status(struct virtio_dev *d) { return vread(d, Status); }

static void add_status(struct virtio_dev *d, u32 bits) { vwrite(d, Status, vread(d, Status) | bits); }

void virtio_reset(struct virtio_dev *d)
{
    vwrite(d, Status, 0);
    /* "The driver SHOULD wait for the reset to complete by reading device status until it is 0." */
    for (int i = 0; i < 1000 && vread(d, Status) != 0; i++)
        ;
    for (unsigned q = 0; q < VIRTIO_MAX_VQS; q++)
        d->vqs[q].ready = false;
    d->nvqs = 0;
    d->features = 0;
    d->spurious_run = 0;
    if (d->irq_masked) {
        d->irq_masked = false;
        virtio_attach_irq(d);
    }
}

bool virtio_begin(struct virtio_dev *d)
{
    virtio_reset(d);
    add_status(d, ACKNOWLEDGE);
    add_status(d, DRIVER);
    if (d->version == 1)
        vwrite(d, GuestPageSize, PAGE_SIZE);
    vwrite(d, DeviceFeaturesSel, 1);
    u64 hi = vread(d, DeviceFeatures);
    vwrite(d, DeviceFeaturesSel, 0);
    d->offered = (hi << 32) | vread(d, DeviceFeatures);
    if (d->version == 2 && !((d->offered >> VIRTIO_F_VERSION_1) & 1)) {
        printf("virtio-mmio: version 2 device without VIRTIO_F_VERSION_1\n");
        add_status(d, FAILED);
        return false;
    }
    return true;
}

bool virtio_negotiate(struct virtio_dev *d, u64 wanted)
{
    /* "A driver MUST accept VIRTIO_F_VERSION_1 if it is offered." */
    d->features = d->offered & (wanted | (1ULL << VIRTIO_F_VERSION_1));
    vwrite(d, DriverFeaturesSel, 1);
    vwrite(d, DriverFeatures, (u32)(d->features >> 32));
    vwrite(d, DriverFeaturesSel, 0);
    vwrite(d, DriverFeatures, (u32)d->features);
    if (d->version == 1)
        return true; /* legacy has no FEATURES_OK */
    add_status(d, FEATURES_OK);
    if (!(vread(d, Status) & FEATURES_OK)) {
        printf("virtio-mmio: device did not accept features %#llx\n", d->features);
        add_status(d, FAILED);
        return false;
    }
    return true;
}

bool virtio_driver_ok(struct virtio_dev *d)
{
    add_status(d, DRIVER_OK);
    return (vread(d, Status) & (DRIVER_OK | DEVICE_NEEDS_RESET)) == DRIVER_OK;
}

u32 virtio_config_read32(struct virtio_dev *d, u32 offset)
{
    if (d->version == 1) {
        /* Legacy: byte accesses as Linux does; the balloon's legacy config is little-endian. */
        u32 v = 0;
        for (int i = 0; i < 4; i++)
            v |= (u32)mmio_read8(d->base + Config + offset + i) << (8 * i);
        return v;
    }
    u32 before, v;
    do { /* "Device Configuration Space": retry until the generation is stable */
        before = vread(d, ConfigGeneration);
        v = mmio_read32(d->base + Config + offset);
    } while (vread(d, ConfigGeneration) != before);
    return v;
}

void virtio_config_write32(struct virtio_dev *d, u32 offset, u32 v)
{
    /* One 4-byte write in both modes: the legacy balloon requires `actual` to be written atomically. */
    mmio_write32(d->base + Config + offset, v);
}

static void virtio_irq(void *arg)
{
    struct virtio_dev *d = arg;
    /* As Linux's vm_interrupt: read InterruptStatus, acknowledge it at once, then handle. */
    u32 isr = vread(d, InterruptStatus);
    if (isr)
        vwrite(d, InterruptACK, isr);
    d->last_isr = isr;
    d->irq_count++;
    if (!isr) {
        /* A line held up with nothing to report (a device in trouble, e.g. QEMU's once it is
           "broken" stops updating its line): like Linux's "nobody cared", mask it after a while;
           virtio_reset() unmasks. */
        if (++d->spurious_run >= SPURIOUS_LIMIT) {
            irq_mask_gsi(d->irq);
            d->irq_masked = true;
            d->storms++;
        }
        return;
    }
    d->spurious_run = 0;
    if (isr & VIRTIO_INT_CONFIG)
        d->config_events++;
    if (isr & VIRTIO_INT_USED) {
        d->used_events++;
        for (unsigned q = 0; q < VIRTIO_MAX_VQS; q++)
            if (d->vqs[q].ready)
                d->vqs[q].irq_used = *(volatile u16 *)&d->vqs[q].used->idx;
    }
}

bool virtio_attach_irq(struct virtio_dev *d)
{
    if (!irq_route_gsi(d->irq, virtio_irq, d)) {
        printf("virtio-mmio: irq %u is not an IOAPIC pin\n", d->irq);
        return false;
    }
    return true;
}
