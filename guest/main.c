/* main.c: the C entry after long mode: PVH start info, memory map, banner, and the scenario dispatch. */
#include "virtio.h"

#define XEN_HVM_START_MAGIC_VALUE 0x336ec578
#define HVM_MEMMAP_TYPE_RAM 1

/* Xen's public/arch-x86/hvm/start_info.h, the PVH boot ABI. */
struct hvm_start_info {
    u32 magic;
    u32 version;
    u32 flags;
    u32 nr_modules;
    u64 modlist_paddr;
    u64 cmdline_paddr;
    u64 rsdp_paddr;
    u64 memmap_paddr;   /* version >= 1 */
    u32 memmap_entries; /* version >= 1 */
    u32 reserved;
};
struct hvm_memmap_table_entry {
    u64 addr;
    u64 size;
    u32 type;
    u32 reserved;
};

struct scenario {
    const char *name;
    int (*run)(void);
};
int scenario_selftest(void);
int scenario_demo(void);
int scenario_verify(void);
int scenario_oom(void);
int scenario_stats(void);
int scenario_bench(void);
int scenario_triplefault(void);
int scenario_hostile(void);
int scenario_gaps(void);
int scenario_reboot(void);
int scenario_rng(void);
extern const char *fail_reason;
const char *current_scenario = "boot";

static const struct scenario scenarios[] = {
    {"selftest", scenario_selftest}, {"demo", scenario_demo},       {"verify", scenario_verify},
    {"oom", scenario_oom},           {"stats", scenario_stats},     {"bench", scenario_bench},
    {"triplefault", scenario_triplefault}, {"hostile", scenario_hostile},
    {"gaps", scenario_gaps},         {"reboot", scenario_reboot},   {"rng", scenario_rng},
};

static void boot_fail(const char *why)
{
    printf("pyvmm-guest: %s\n", why);
    printf("scenario boot: FAIL %s\n", why);
    guest_exit(EXIT_BAD_BOOT);
}

void kmain(u32 start_info_pa)
{
    uart_init();
    const struct hvm_start_info *si = (const struct hvm_start_info *)(uintptr_t)start_info_pa;
    if (!si || si->magic != XEN_HVM_START_MAGIC_VALUE)
        boot_fail("no hvm_start_info (bad magic)");
    cmdline_set(si->cmdline_paddr ? (const char *)(uintptr_t)si->cmdline_paddr : "");
    if (si->version < 1 || !si->memmap_paddr || !si->memmap_entries)
        boot_fail("hvm_start_info has no memory map (version 0)");

    const struct hvm_memmap_table_entry *mm =
        (const struct hvm_memmap_table_entry *)(uintptr_t)si->memmap_paddr;
    for (u32 i = 0; i < si->memmap_entries; i++) {
        printf("memmap: %#014llx-%#014llx type %u\n", mm[i].addr, mm[i].addr + mm[i].size, mm[i].type);
        if (mm[i].type == HVM_MEMMAP_TYPE_RAM && mm[i].size)
            alloc_add_range(mm[i].addr, mm[i].addr + mm[i].size);
    }
    alloc_init();
    irq_init();
    sti();
    virtio_timeout_ticks = cmdline_u64("virtio_timeout", 60) * TIMER_HZ;

    printf("pyvmm-guest: memory %llu MiB (%llu bytes RAM), %llu of %llu pages free\n", mem.ram_bytes >> 20,
           mem.ram_bytes, mem.free_pages, mem.total_pages);
    printf("pyvmm-guest: cmdline \"%s\"\n", cmdline);

    char name[32] = "demo";
    cmdline_get(cmdline, "scenario", name, sizeof(name));
    for (unsigned i = 0; i < ARRAY_SIZE(scenarios); i++) {
        if (strcmp(name, scenarios[i].name) == 0) {
            current_scenario = scenarios[i].name;
            printf("pyvmm-guest: scenario %s\n", current_scenario);
            int code = scenarios[i].run();
            if (code == EXIT_PASS)
                printf("scenario %s: PASS\n", current_scenario);
            else
                printf("scenario %s: FAIL %s\n", current_scenario, fail_reason ? fail_reason : "");
            guest_exit((u32)code);
        }
    }
    printf("scenario %s: FAIL unknown scenario (known:", name);
    for (unsigned i = 0; i < ARRAY_SIZE(scenarios); i++)
        printf(" %s", scenarios[i].name);
    printf(")\n");
    guest_exit(EXIT_BAD_SCENARIO);
}
