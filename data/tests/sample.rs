//! The committed sample archive and (when present) the full Kaggle data.

mod common;
#[path = "common/skip.rs"]
mod skip;

use std::io::Read;
use std::path::Path;
use std::process::Command;

use data::{load, load_csv, Dataset, Split, NUM_CLASSES, PIXELS};

/// Per-class row counts of the sample's train.csv. scripts/make_sample.py allocates the
/// 4000 rows proportionally to the full train.csv class counts (`FULL_COUNTS`) with
/// largest-remainder rounding; these numbers were read back from the generated zip with
/// Python (`cut -d, -f1 | sort | uniq -c`).
const SAMPLE_COUNTS: [usize; NUM_CLASSES] = [393, 457, 397, 408, 391, 362, 393, 414, 383, 402];
/// Per-class row counts of the full 42,000-row train.csv.
const FULL_COUNTS: [usize; NUM_CLASSES] = [4123, 4802, 4163, 4284, 4110, 3803, 4123, 4351, 4023, 4218];

const FULL_ZIP_ABSENT: &str = "no /work/shared/data/digit-recognizer.zip or ../shared/data/digit-recognizer.zip";

fn sample_train() -> Dataset {
    load(&common::sample_zip(), Split::Train).expect("sample train loads")
}

#[test]
fn sample_zip_row_counts_and_shape() {
    let train = sample_train();
    assert_eq!(train.len(), 4000);
    assert_eq!(train.images.len(), 4000 * PIXELS);
    assert_eq!(train.labels.as_ref().map(Vec::len), Some(4000));
    assert_eq!(train.source, "digit-recognizer.zip:train.csv");

    let test = load(&common::sample_zip(), Split::Test).expect("sample test loads");
    assert_eq!(test.len(), 1000);
    assert!(test.labels.is_none(), "test.csv is unlabelled");
    assert_eq!(test.source, "digit-recognizer.zip:test.csv");
}

#[test]
fn sample_label_histogram_matches_stratification() {
    let counts = sample_train().class_counts().expect("labelled");
    assert_eq!(counts, SAMPLE_COUNTS);
    // And it is the stratified share of the full data: within one row of 4000 * p_c.
    let full_total: usize = FULL_COUNTS.iter().sum();
    for c in 0..NUM_CLASSES {
        let expected = 4000.0 * FULL_COUNTS[c] as f64 / full_total as f64;
        assert!(
            (counts[c] as f64 - expected).abs() <= 1.0,
            "class {c}: {} rows, expected about {expected:.1}",
            counts[c]
        );
    }
}

/// Values extracted with Python from the ORIGINAL archive: the sample's first train row is
/// row 26 (0-based, after the header) of the full train.csv:
/// `rows = zipfile.ZipFile('digit-recognizer.zip').read('train.csv').decode().splitlines()`
/// `r = list(map(int, rows[1 + 26].split(',')))` -> label `r[0] == 6`, `sum(r[1:]) == 32495`,
/// 193 non-zero pixels, the first non-zero ones at 72..77, and `r[1+350:1+360]` below.
#[test]
fn sample_first_train_image_matches_python_extraction() {
    let train = sample_train();
    assert_eq!(train.label(0), Some(6));
    let img = train.image(0);
    assert_eq!(img.iter().map(|&p| u32::from(p)).sum::<u32>(), 32495);
    assert_eq!(img.iter().filter(|&&p| p != 0).count(), 193);
    assert!(img[..72].iter().all(|&p| p == 0));
    assert_eq!(&img[72..77], &[2, 46, 173, 255, 95]);
    assert_eq!(&img[350..360], &[0, 0, 0, 22, 172, 192, 192, 81, 39, 0]);
    // Last train row: label 3, pixel sum 30712. First test row: pixel sum 32087.
    assert_eq!(train.label(3999), Some(3));
    assert_eq!(train.image(3999).iter().map(|&p| u32::from(p)).sum::<u32>(), 30712);
    let test = load(&common::sample_zip(), Split::Test).unwrap();
    assert_eq!(test.image(0).iter().map(|&p| u32::from(p)).sum::<u32>(), 32087);
    assert_eq!(&test.image(0)[400..410], &[0, 0, 0, 0, 0, 0, 0, 86, 240, 253]);
    // Whole-set checksums (Python: sum of all pixels of the sample's train / test rows).
    assert_eq!(train.images.iter().map(|&p| u64::from(p)).sum::<u64>(), 104_289_626);
    assert_eq!(test.images.iter().map(|&p| u64::from(p)).sum::<u64>(), 26_380_245);
}

/// Independent reader: Python's zipfile + str.split, on the original archive when this
/// machine has it (else on the sample, and the original's check is reported skipped), compared
/// byte for byte with our parse.
#[test]
fn first_train_row_equals_python_reading_of_original() {
    const TEST: &str = "first_train_row_equals_python_reading_of_original";
    let Some(python) = common::python() else {
        skip::skip(TEST, "no Python interpreter found");
        return;
    };
    let (zip, row) = match common::full_zip() {
        Some(z) => (z, 26),
        None => {
            skip::skip(TEST, FULL_ZIP_ABSENT);
            println!("NOTE: comparing against the sample with Python instead");
            (common::sample_zip(), 0)
        }
    };
    let script = format!(
        "import zipfile,sys\n\
         rows = zipfile.ZipFile(sys.argv[1]).read('train.csv').decode().splitlines()\n\
         print(rows[1 + {row}])\n"
    );
    let out = Command::new(&python).arg("-c").arg(&script).arg(&zip).output().expect("python runs");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    let values: Vec<u8> =
        String::from_utf8(out.stdout).unwrap().trim().split(',').map(|v| v.parse().unwrap()).collect();
    assert_eq!(values.len(), 785);
    let train = sample_train();
    assert_eq!(train.label(0), Some(values[0]));
    assert_eq!(train.image(0), &values[1..]);
}

fn extract_sample(dir: &Path) {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(common::sample_zip()).unwrap()).unwrap();
    for name in ["train.csv", "test.csv", "sample_submission.csv"] {
        let mut bytes = Vec::new();
        zip.by_name(name).unwrap().read_to_end(&mut bytes).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn folder_zip_and_csv_give_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    extract_sample(dir.path());
    for split in [Split::Train, Split::Test] {
        let from_zip = load(&common::sample_zip(), split).unwrap();
        let from_dir = load(dir.path(), split).unwrap();
        let csv_path = dir.path().join(split.file_name());
        let from_csv = load_csv(&csv_path).unwrap();
        // A CSV path given to `load` ignores the split: the header decides.
        let other = if split == Split::Train { Split::Test } else { Split::Train };
        let from_csv_via_load = load(&csv_path, other).unwrap();
        for d in [&from_dir, &from_csv, &from_csv_via_load] {
            assert_eq!(d.images, from_zip.images);
            assert_eq!(d.labels, from_zip.labels);
        }
        assert!(from_dir.source.ends_with(split.file_name()));
    }
}

#[test]
fn sample_submission_in_zip_is_kaggle_shaped() {
    let dir = tempfile::tempdir().unwrap();
    extract_sample(dir.path());
    let sub = data::read_submission(&dir.path().join("sample_submission.csv")).unwrap();
    assert_eq!(sub.len(), 1000);
    assert!(sub.iter().enumerate().all(|(i, &(id, l))| id as usize == i + 1 && l == 0));
}

#[test]
fn sample_zip_is_small() {
    let size = std::fs::metadata(common::sample_zip()).unwrap().len();
    assert!(size < 3_000_000, "sample zip is {size} bytes");
}

#[test]
fn to_f32_matches_raw_pixels_on_sample() {
    let train = sample_train();
    let x = train.to_f32(&[0, 3999]);
    assert_eq!(x.len(), 2 * PIXELS);
    for (f, &p) in x.iter().zip(train.image(0).iter().chain(train.image(3999))) {
        assert_eq!(*f, p as f32 / 255.0);
    }
    assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn full_kaggle_data_when_present() {
    let Some(zip) = common::full_zip() else {
        skip::skip("full_kaggle_data_when_present", FULL_ZIP_ABSENT);
        return;
    };
    let t = std::time::Instant::now();
    let train = load(&zip, Split::Train).expect("full train.csv parses");
    assert_eq!(train.len(), 42_000);
    assert_eq!(train.class_counts(), Some(FULL_COUNTS));
    // Python: first row of the full train.csv has label 8 and pixel sum 49669.
    assert_eq!(train.label(0), Some(8));
    assert_eq!(train.image(0).iter().map(|&p| u32::from(p)).sum::<u32>(), 49669);
    let test = load(&zip, Split::Test).expect("full test.csv parses");
    assert_eq!(test.len(), 28_000);
    assert!(test.labels.is_none());
    // Python: first / last test rows have pixel sums 29601 / 31756.
    assert_eq!(test.image(0).iter().map(|&p| u32::from(p)).sum::<u32>(), 29601);
    assert_eq!(test.image(27_999).iter().map(|&p| u32::from(p)).sum::<u32>(), 31756);
    println!("full data: loaded 42,000 + 28,000 rows in {:?}", t.elapsed());
}
