//! Stratified split and the shared RNG.

use data::{stratified_split, Rng, NUM_CLASSES};

/// Deterministic labels with unequal class sizes: class c appears 100 + 7c times.
fn labels() -> Vec<u8> {
    let mut l = Vec::new();
    for c in 0..NUM_CLASSES as u8 {
        l.extend(std::iter::repeat_n(c, 100 + 7 * c as usize));
    }
    Rng::new(1).shuffle(&mut l);
    l
}

fn counts(labels: &[u8], idx: &[usize]) -> [usize; NUM_CLASSES] {
    let mut c = [0; NUM_CLASSES];
    for &i in idx {
        c[labels[i] as usize] += 1;
    }
    c
}

#[test]
fn per_class_proportions() {
    let l = labels();
    for frac in [0.1, 0.25, 0.5] {
        let (train, val) = stratified_split(&l, frac, 42);
        let vc = counts(&l, &val);
        let tc = counts(&l, &train);
        for c in 0..NUM_CLASSES {
            let n = 100 + 7 * c;
            assert_eq!(vc[c], (n as f64 * frac).round() as usize, "class {c} frac {frac}");
            assert_eq!(vc[c] + tc[c], n);
        }
    }
}

#[test]
fn partition_sorted_and_disjoint() {
    let l = labels();
    let (train, val) = stratified_split(&l, 0.2, 3);
    assert!(train.windows(2).all(|w| w[0] < w[1]));
    assert!(val.windows(2).all(|w| w[0] < w[1]));
    let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..l.len()).collect::<Vec<_>>());
}

#[test]
fn deterministic_per_seed() {
    let l = labels();
    assert_eq!(stratified_split(&l, 0.1, 9), stratified_split(&l, 0.1, 9));
    assert_ne!(stratified_split(&l, 0.1, 9).1, stratified_split(&l, 0.1, 10).1);
}

#[test]
fn edge_fractions_and_inputs() {
    let l = labels();
    let (t, v) = stratified_split(&l, 0.0, 1);
    assert_eq!((t.len(), v.len()), (l.len(), 0));
    let (t, v) = stratified_split(&l, 1.0, 1);
    assert_eq!((t.len(), v.len()), (0, l.len()));
    assert_eq!(stratified_split(&l, f64::NAN, 1).1.len(), 0);
    assert_eq!(stratified_split(&l, -3.0, 1).1.len(), 0);
    assert_eq!(stratified_split(&l, 7.0, 1).0.len(), 0);
    assert_eq!(stratified_split(&[], 0.1, 1), (vec![], vec![]));
    // Tiny classes: round(1 * 0.1) = 0, round(5 * 0.1) = 1 (0.5 rounds away from zero).
    let (_, v) = stratified_split(&[3, 4, 4, 4, 4, 4], 0.1, 1);
    assert_eq!(v.len(), 1);
}

#[test]
fn on_the_sample_data() {
    let zip = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sample/digit-recognizer.zip");
    let train = data::load(&zip, data::Split::Train).unwrap();
    let labels = train.labels.as_ref().unwrap();
    let (t, v) = stratified_split(labels, 0.1, 0);
    let all = train.class_counts().unwrap();
    let vc = counts(labels, &v);
    for c in 0..NUM_CLASSES {
        assert_eq!(vc[c], (all[c] as f64 * 0.1).round() as usize);
    }
    assert_eq!(t.len() + v.len(), 4000);
    let val = train.subset(&v);
    assert_eq!(val.len(), v.len());
    assert_eq!(val.image(0), train.image(v[0]));
    assert_eq!(val.label(5), train.label(v[5]));
}

#[test]
fn rng_is_reference_splitmix64() {
    // Reference SplitMix64 outputs for seed 0 (Vigna's splitmix64.c).
    let mut r = Rng::new(0);
    assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
    assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    assert_eq!(r.next_u64(), 0x06C4_5D18_8009_454F);
}

#[test]
fn rng_ranges_and_shuffle() {
    let mut r = Rng::new(123);
    let mut sum = 0.0;
    for _ in 0..10_000 {
        let f = r.next_f32();
        assert!((0.0..1.0).contains(&f));
        sum += f64::from(f);
        let d = r.next_f64();
        assert!((0.0..1.0).contains(&d));
        assert!(r.below(7) < 7);
    }
    assert!((sum / 10_000.0 - 0.5).abs() < 0.02, "mean {}", sum / 10_000.0);
    assert_eq!(r.below(0), 0);
    let mut v: Vec<u32> = (0..100).collect();
    Rng::new(5).shuffle(&mut v);
    let mut w: Vec<u32> = (0..100).collect();
    Rng::new(5).shuffle(&mut w);
    assert_eq!(v, w);
    assert_ne!(v, (0..100).collect::<Vec<_>>());
    v.sort_unstable();
    assert_eq!(v, (0..100).collect::<Vec<_>>());
    // Every position gets every value roughly equally often (no modulo / off-by-one bias).
    let mut hits = [[0u32; 4]; 4];
    let mut r = Rng::new(77);
    for _ in 0..40_000 {
        let mut a = [0usize, 1, 2, 3];
        r.shuffle(&mut a);
        for (pos, &val) in a.iter().enumerate() {
            hits[pos][val] += 1;
        }
    }
    for row in hits {
        for h in row {
            assert!((9_500..10_500).contains(&h), "{hits:?}");
        }
    }
}
