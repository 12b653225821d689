//! `verify` streams: the heap it uses is bounded whatever the entry count. A counting global
//! allocator records the peak heap while `verify_path` walks a queue image with 2^20
//! descriptors (a 32 MiB ring). One test in this binary, so no other thread allocates while
//! it measures.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use shmsnap_core::{image_entries, Layout, LayoutRequest, Strategy, Writer, DESCRIPTOR_BYTES};
use shmsnap_linux::snapshot::{
    self, check_image, ImageSummary, SnapshotErrorKind, SnapshotMeta, CRC_CHUNK,
};

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees hold; the counters are plain atomics and never affect allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged; `ptr` came from `alloc` above, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak heap growth (bytes) while `f` runs.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    (r, PEAK.load(Ordering::Relaxed) - base)
}

#[test]
fn verify_of_a_million_descriptors_holds_a_bounded_buffer() {
    const ENTRIES: u64 = 1 << 20;
    let request = LayoutRequest {
        entries: ENTRIES,
        data_size: 4096,
    };
    let region_len = Layout::new(u64::MAX >> 1, request).unwrap().tail_offset;
    let mem: Vec<AtomicU64> = (0..region_len / 8).map(|_| AtomicU64::new(0)).collect();
    let mut w = Writer::open_or_init(&mem[..], request, shmsnap_testkit::CLIENT).unwrap();
    // 3000 commits: valid entries on both sides of the first 2048-descriptor chunk.
    for i in 0..3000u32 {
        w.commit(&i.to_le_bytes()).unwrap();
    }
    drop(w);
    let mut image: Vec<u8> = mem
        .iter()
        .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
        .collect();
    drop(mem);
    let layout = Layout::read_bytes(&image).unwrap();
    let expect: Vec<u64> = image_entries(&image, &layout).map(|d| d.seq).collect();
    assert!(expect.len() > 100 && expect.iter().any(|&s| s > 2048));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.snap");
    let meta = SnapshotMeta {
        strategy: Strategy::Queue.code(),
        generation: 1,
        unix_time_ns: 0,
    };
    let write = |image: &[u8]| {
        std::fs::write(&path, image).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        snapshot::write_footer(&f, image.len() as u64, meta).unwrap();
    };
    write(&image);

    // Sound: every entry seen, in bounded memory (the CRC's chunk plus the ring's chunk plus
    // small change; the ring alone is 32 MiB).
    let bound = CRC_CHUNK + (64 << 10) + (16 << 10);
    let (info, peak) = peak_during(|| snapshot::verify_path(&path).unwrap());
    assert!(
        peak <= bound,
        "verify held {peak} bytes of heap (bound {bound})"
    );
    let f = std::fs::File::open(&path).unwrap();
    let mut seen = Vec::new();
    let (summary, peak) = peak_during(|| check_image(&f, &info, |_, d| seen.push(d.seq)));
    let ImageSummary::Queue { entries, .. } = summary.unwrap() else {
        panic!("not a queue summary");
    };
    assert_eq!(entries as usize, expect.len());
    assert_eq!(seen, expect);
    assert!(
        peak <= bound + seen.capacity() * 8,
        "check_image held {peak} bytes"
    );

    // The very last descriptor made invalid (a seq that belongs to another slot): found, with
    // the same bounded memory.
    let last = (layout.desc_offset + (ENTRIES - 1) * DESCRIPTOR_BYTES) as usize;
    image[last..last + 8].copy_from_slice(&1u64.to_le_bytes());
    write(&image);
    let (r, peak) = peak_during(|| snapshot::verify_path(&path));
    let e = r.unwrap_err();
    assert!(
        matches!(e.kind(), SnapshotErrorKind::BadDescriptor { slot } if *slot == ENTRIES - 1),
        "{e}"
    );
    assert!(
        peak <= bound,
        "verify held {peak} bytes of heap (bound {bound})"
    );
}
