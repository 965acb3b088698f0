//! Submission format and atomic writes.

use std::path::Path;

use data::{atomic_write, atomic_write_with, read_submission, write_submission, DataError, Dataset};

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn submission_exact_format_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("submission.csv");
    write_submission(&path, &[3, 0, 9]).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "ImageId,Label\n1,3\n2,0\n3,9\n");
    assert_eq!(read_submission(&path).unwrap(), vec![(1, 3), (2, 0), (3, 9)]);

    let labels: Vec<u8> = (0..28_000).map(|i| (i * 7 % 10) as u8).collect();
    write_submission(&path, &labels).unwrap();
    let back = read_submission(&path).unwrap();
    assert_eq!(back.len(), 28_000);
    for (i, &(id, l)) in back.iter().enumerate() {
        assert_eq!((id as usize, l), (i + 1, labels[i]));
    }
    assert_eq!(entries(dir.path()), ["submission.csv"], "no temp file left");
}

#[test]
fn submission_rejects_bad_labels_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub.csv");
    let e = write_submission(&path, &[1, 2, 10]).unwrap_err();
    assert!(matches!(e, DataError::LabelRange { value: 10, .. }), "{e:?}");
    assert!(e.to_string().contains("sub.csv:4") && e.to_string().contains("label 10"), "{e}");
    assert!(write_submission(&path, &[]).is_err());
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn read_submission_validates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.csv");
    let cases: [(&str, &str); 6] = [
        ("", "s.csv: file is empty"),
        ("ImageId,Prediction\n1,2\n", "s.csv:1: bad header"),
        ("ImageId,Label\n1,2\n2,x\n", r#"s.csv:3: column Label: "x" is not an integer in 0..=9"#),
        ("ImageId,Label\n1,12\n", "s.csv:2: column Label: label 12 out of range 0..=9"),
        ("ImageId,Label\n1,2,3\n", "s.csv:2: expected 2 fields, found 3"),
        ("ImageId,Label\n-1,2\n", r#"s.csv:2: column ImageId: "-1""#),
    ];
    for (text, want) in cases {
        std::fs::write(&path, text).unwrap();
        let e = read_submission(&path).unwrap_err().to_string();
        assert!(e.contains(want), "{text:?}: {e}");
    }
    std::fs::write(&path, "ImageId,Label\r\n1,2\r\n2,3").unwrap();
    assert_eq!(read_submission(&path).unwrap(), vec![(1, 2), (2, 3)]);
    let missing = dir.path().join("missing.csv");
    assert!(read_submission(&missing).unwrap_err().to_string().contains("no such file"));
}

#[test]
fn atomic_write_replaces_and_leaves_no_temp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    atomic_write(&path, b"first").unwrap();
    atomic_write(&path, b"second, longer").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
    atomic_write_with(&path, |w| {
        for i in 0..1000 {
            write!(w, "{i} ")?;
        }
        Ok(())
    })
    .unwrap();
    assert!(std::fs::read_to_string(&path).unwrap().starts_with("0 1 2 "));
    assert_eq!(entries(dir.path()), ["model.onnx"]);
}

#[test]
fn failed_write_keeps_old_file_and_removes_temp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.bin");
    atomic_write(&path, b"good").unwrap();
    let e = atomic_write_with(&path, |w| {
        w.write_all(b"half")?;
        Err(std::io::Error::other("disk on fire"))
    })
    .unwrap_err();
    assert!(e.to_string().contains("ckpt.bin") && e.to_string().contains("disk on fire"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"good");
    assert_eq!(entries(dir.path()), ["ckpt.bin"]);
}

#[test]
fn atomic_write_creates_parents_and_reports_bad_targets() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b/out.csv");
    atomic_write(&nested, b"x").unwrap();
    assert_eq!(std::fs::read(&nested).unwrap(), b"x");
    // Target is an existing folder: rename fails, error names it, no temp left.
    let folder = dir.path().join("a");
    let e = atomic_write(&folder, b"y").unwrap_err();
    assert!(e.to_string().contains(&folder.display().to_string()), "{e}");
    assert_eq!(entries(dir.path()), ["a"]);
    assert_eq!(entries(&folder), ["b"]);
}

#[test]
fn dataset_helpers() {
    let d = Dataset {
        images: (0..3 * 784).map(|i| (i % 256) as u8).collect(),
        labels: Some(vec![4, 5, 6]),
        source: "hand-made".into(),
    };
    assert_eq!(d.len(), 3);
    assert!(!d.is_empty());
    assert_eq!(d.image(1)[0], (784 % 256) as u8);
    assert!(d.get(3).is_none());
    assert!(d.get(usize::MAX).is_none());
    assert_eq!(d.label(2), Some(6));
    assert_eq!(d.label(3), None);
    let s = d.subset(&[2, 0, 2]);
    assert_eq!(s.len(), 3);
    assert_eq!(s.labels, Some(vec![6, 4, 6]));
    assert_eq!(s.image(1), d.image(0));
    assert_eq!(s.source, "hand-made");
    let x = d.to_f32(&[0]);
    assert_eq!(x.len(), 784);
    assert_eq!(x[0], 0.0);
    assert_eq!(x[255], 1.0);
    assert_eq!(x[128], 128.0 / 255.0);
    let mut c = [0usize; 10];
    c[4] = 1;
    c[5] = 1;
    c[6] = 1;
    assert_eq!(d.class_counts(), Some(c));
    let empty = Dataset { images: vec![], labels: None, source: String::new() };
    assert!(empty.is_empty());
    assert_eq!(empty.class_counts(), None);
    assert!(empty.to_f32(&[]).is_empty());
}

#[test]
fn csv_round_trips_labelled_and_unlabelled_splits() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sample/digit-recognizer.zip");
    let train = data::load(&sample, data::Split::Train).unwrap();
    let (_, val) = data::stratified_split(train.labels.as_ref().unwrap(), data::VAL_FRACTION, data::SPLIT_SEED);
    let val = train.subset(&val);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("val.csv");
    data::write_csv(&path, &val).unwrap();
    let back = data::load_csv(&path).unwrap();
    assert_eq!((back.images, back.labels), (val.images.clone(), val.labels.clone()));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("label,pixel0,pixel1,"), "{}", &text[..40]);

    let test = Dataset { labels: None, ..val };
    let path = dir.path().join("test.csv");
    data::write_csv(&path, &test).unwrap();
    let back = data::load_csv(&path).unwrap();
    assert_eq!((back.images, back.labels), (test.images, None));
    assert_eq!(entries(dir.path()), ["test.csv", "val.csv"]);
}
