//! Frozen tail units: a retired unit is reused only once every entry that may refer to it
//! has been evicted, and the safe API offers no way to write a frozen unit.

use shmsnap_core::{LayoutRequest, UnitError, UnitState, UnitTable, Writer};
use shmsnap_testkit::zeroed_words;

const REQ: LayoutRequest = LayoutRequest {
    entries: 4,
    data_size: 256,
};
const UNIT: usize = 64;

#[test]
fn retired_unit_is_not_reused_while_an_entry_may_refer_to_it() {
    let mem = zeroed_words(3 * 4096 + 4 * UNIT);
    let mut w = Writer::init(&mem[..], REQ, shmsnap_testkit::CLIENT).unwrap();
    assert_eq!(w.unit_count(UNIT), 4);
    let mut states = [0u64; 4];
    let mut table = UnitTable::new(&mut states, UNIT).unwrap();

    // Commit 1 writes every unit.
    let mut tx = w.begin(8).unwrap();
    for u in 0..4 {
        let g = tx.alloc_unit(&mut table).unwrap();
        assert_eq!(g.unit(), u);
        tx.write_unit(&table, &g, 0, &[u as u8; UNIT]).unwrap();
    }
    assert_eq!(tx.alloc_unit(&mut table).unwrap_err(), UnitError::Exhausted);
    let s1 = tx.commit(b"root v1!").unwrap();

    // Commit 2 stops referring to unit 2: retired as of 2.
    let tx = w.begin(8).unwrap();
    let s2 = tx.seq();
    table.retire(2, s2).unwrap();
    tx.commit(b"root v2!").unwrap();
    assert_eq!(table.state(2), Some(UnitState::Retired { as_of: s2 }));

    // Entry 1 is still live and may refer to unit 2: no reuse.
    let mut tx = w.begin(8).unwrap();
    assert_eq!(tx.alloc_unit(&mut table).unwrap_err(), UnitError::Exhausted);
    drop(tx);
    assert!(w.region().entries().any(|d| d.seq == s1));

    // Evicting entries before 2 frees it.
    w.evict_before(s2);
    assert!(!w.region().entries().any(|d| d.seq == s1));
    let mut tx = w.begin(8).unwrap();
    let g = tx.alloc_unit(&mut table).unwrap();
    assert_eq!(g.unit(), 2);
    tx.write_unit(&table, &g, 8, &[9; 8]).unwrap();
    tx.commit(b"root v3!").unwrap();
    let mut buf = [0u8; 16];
    w.region().read_tail(2 * UNIT as u64, &mut buf).unwrap();
    assert_eq!(buf, [2, 2, 2, 2, 2, 2, 2, 2, 9, 9, 9, 9, 9, 9, 9, 9]);
}

#[test]
fn eviction_for_ring_space_also_frees_retired_units() {
    let mem = zeroed_words(3 * 4096 + UNIT);
    let mut w = Writer::init(&mem[..], REQ, shmsnap_testkit::CLIENT).unwrap();
    let mut states = [0u64; 1];
    let mut table = UnitTable::new(&mut states, UNIT).unwrap();
    let mut tx = w.begin(8).unwrap();
    let g = tx.alloc_unit(&mut table).unwrap();
    tx.write_unit(&table, &g, 0, &[1; UNIT]).unwrap();
    tx.commit(&[1; 8]).unwrap();
    let tx = w.begin(8).unwrap();
    table.retire(0, tx.seq()).unwrap();
    tx.commit(&[2; 8]).unwrap();
    // Four more commits push entry 1 out of the 4-slot ring.
    for i in 3..7u8 {
        w.commit(&[i; 8]).unwrap();
    }
    assert!(w.oldest_live() > 2);
    let mut tx = w.begin(8).unwrap();
    assert_eq!(tx.alloc_unit(&mut table).unwrap().unit(), 0);
}

#[test]
fn unit_writes_are_bounds_checked_and_grants_are_per_transaction() {
    let mem = zeroed_words(3 * 4096 + 2 * UNIT);
    let mut w = Writer::init(&mem[..], REQ, shmsnap_testkit::CLIENT).unwrap();
    // The table may be larger than the tail: only units that fit are handed out.
    let mut states = [0u64; 8];
    let mut table = UnitTable::new(&mut states, UNIT).unwrap();
    let mut tx = w.begin(8).unwrap();
    let g = tx.alloc_unit(&mut table).unwrap();
    assert!(matches!(
        tx.write_unit(&table, &g, 60, &[0; 8]),
        Err(UnitError::WriteOutOfBounds { .. })
    ));
    assert!(matches!(
        tx.write_unit(&table, &g, usize::MAX, &[0; 8]),
        Err(UnitError::WriteOutOfBounds { .. })
    ));
    let _g2 = tx.alloc_unit(&mut table).unwrap();
    assert_eq!(tx.alloc_unit(&mut table).unwrap_err(), UnitError::Exhausted);
    tx.commit(b"x").unwrap();
    assert_eq!(
        UnitTable::new(&mut [0u64; 1], 12).unwrap_err(),
        UnitError::BadUnitSize { unit_size: 12 }
    );
    assert_eq!(table.retire(7, 1), Err(UnitError::NotInUse { unit: 7 }));
    assert_eq!(table.retire(9, 1), Err(UnitError::OutOfRange { unit: 9 }));
    assert_eq!(table.retire(0, 0), Err(UnitError::BadRetirePoint));
}
