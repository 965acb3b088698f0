//! Ensemble voting rules on hand-made logits (expected winners worked out by hand in
//! the comments).

use inference::{argmax, disagreements, labels_from_logits, majority_vote, soft_vote, softmax, DisagreementExample};

const C: usize = 10;

/// Logits for one image: 0 everywhere except the given (class, value) pairs.
fn row(set: &[(usize, f32)]) -> Vec<f32> {
    let mut r = vec![0.0; C];
    for &(c, v) in set {
        r[c] = v;
    }
    r
}

/// A member that is certain of `class`: -inf elsewhere, so its softmax is exactly 1/0.
fn certain(class: usize) -> Vec<f32> {
    let mut r = vec![f32::NEG_INFINITY; C];
    r[class] = 0.0;
    r
}

#[test]
fn clear_majority_wins_even_against_confidence() {
    // Votes 4,4,9: label 4 wins although member 3 is far more confident in 9.
    let members = vec![row(&[(4, 1.0)]), row(&[(4, 0.5)]), row(&[(9, 50.0)])];
    assert_eq!(majority_vote(&members, 1, C), vec![4]);
}

#[test]
fn two_two_tie_goes_to_the_higher_summed_probability() {
    // Members 1-2 vote 3 but barely (3: 2.0 vs 5: 1.9); members 3-4 vote 5 firmly.
    // Summed P(5) = 2*p(1.9) + 2*p(5.0) > summed P(3) = 2*p(2.0) + 2*p(0): 5 wins,
    // though 3 is the lower label.
    let weak3 = row(&[(3, 2.0), (5, 1.9)]);
    let strong5 = row(&[(5, 5.0)]);
    let members = vec![weak3.clone(), weak3, strong5.clone(), strong5];
    assert_eq!(majority_vote(&members, 1, C), vec![5]);

    // Mirror image: now the lower label 3 has the confident voters and wins.
    let weak5 = row(&[(5, 2.0), (3, 1.9)]);
    let strong3 = row(&[(3, 5.0)]);
    let members = vec![weak5.clone(), strong3.clone(), weak5, strong3];
    assert_eq!(majority_vote(&members, 1, C), vec![3]);
}

#[test]
fn exactly_equal_sums_go_to_the_lowest_label() {
    // 2-2 between 7 and 2, each voter certain: summed P(7) = summed P(2) = 2.0 exactly.
    let members = vec![certain(7), certain(2), certain(7), certain(2)];
    assert_eq!(majority_vote(&members, 1, C), vec![2]);
    // 1-1-1 between 8, 6 and 9, each certain: all sums are exactly 1.0.
    let members = vec![certain(8), certain(6), certain(9)];
    assert_eq!(majority_vote(&members, 1, C), vec![6]);
}

#[test]
fn only_tied_labels_can_win_a_tie() {
    // Member 1 votes 5 (5: 1.0, 8: 0.9), member 2 votes 3 (3: 1.0, 8: 0.95). Label 8 has
    // the highest summed probability but no vote. Between 5 and 3 (Z1 < Z2 as
    // e^0.9 < e^0.95): P(5) = e/Z1 + 1/Z2 > P(3) = 1/Z1 + e/Z2, so 5 (not the lower 3).
    let members = vec![row(&[(5, 1.0), (8, 0.9)]), row(&[(3, 1.0), (8, 0.95)])];
    assert_eq!(majority_vote(&members, 1, C), vec![5]);
    // Soft voting has no such restriction: 8 has the highest mean probability.
    assert_eq!(soft_vote(&members, 1, C), vec![8]);
}

#[test]
fn soft_vote_follows_mean_probability_not_votes() {
    // Votes 1,2,2 but member 1 is certain of 1 while 2-3 prefer 2 only slightly:
    // P(1) ~ 1 + 2*0.18 > P(2) ~ 2*0.21, so soft says 1 while majority says 2.
    let members = vec![row(&[(1, 10.0)]), row(&[(2, 1.0), (1, 0.9)]), row(&[(2, 1.0), (1, 0.9)])];
    assert_eq!(soft_vote(&members, 1, C), vec![1]);
    assert_eq!(majority_vote(&members, 1, C), vec![2]);
}

#[test]
fn votes_are_per_image() {
    // Two images, rows concatenated per member.
    let m1 = [row(&[(0, 1.0)]), row(&[(9, 1.0)])].concat();
    let m2 = [row(&[(0, 1.0)]), row(&[(4, 1.0)])].concat();
    let m3 = [row(&[(2, 1.0)]), row(&[(4, 1.0)])].concat();
    let members = vec![m1, m2, m3];
    assert_eq!(majority_vote(&members, 2, C), vec![0, 4]);
    assert_eq!(soft_vote(&members, 2, C), vec![0, 4]);
}

#[test]
fn disagreement_report_counts_and_lists_the_first_images() {
    let a = vec![1, 2, 3, 4, 5];
    let b = vec![1, 2, 0, 4, 6];
    let c = vec![1, 2, 3, 4, 5];
    let d = disagreements(&[a, b, c], 1);
    assert_eq!(d.count, 2);
    assert_eq!(d.total, 5);
    // ImageIds are 1-based like Kaggle's; only `limit` examples are kept.
    assert_eq!(d.examples, vec![DisagreementExample { image_id: 3, votes: vec![3, 0, 3] }]);
}

// The rules below were left untested by the tests above (cargo mutants: changing them broke
// nothing); the comments say which change each assertion catches.

#[test]
fn argmax_ties_go_to_the_lowest_index_and_nan_never_wins() {
    // `>=` instead of `>` would pick the last of the tied maxima.
    assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    assert_eq!(argmax(&[f32::NAN, 1.0, f32::NAN]), 1);
    assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
}

#[test]
fn labels_from_logits_takes_each_rows_argmax() {
    // Three images of ten classes: n * classes rows, not n + classes or n / classes.
    let logits = [row(&[(7, 1.0)]), row(&[(3, 2.0), (8, 2.0)]), row(&[(9, 0.5)])].concat();
    assert_eq!(labels_from_logits(&logits, 3, C), vec![7, 3, 9]);
    // Only the first n rows count.
    assert_eq!(labels_from_logits(&logits, 2, C), vec![7, 3]);
    // No classes: every image gets label 0 (and nothing is sliced).
    assert_eq!(labels_from_logits(&[], 2, 0), vec![0, 0]);
}

#[test]
fn softmax_is_stable_and_never_nan() {
    let close = |got: Vec<f64>, want: &[f64]| {
        assert_eq!(got.len(), want.len());
        assert!(got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-7), "{got:?} vs {want:?}");
    };
    close(softmax(&[0.0, 3f32.ln()]), &[0.25, 0.75]);
    // Shifted by the max: exp(1000) alone would overflow to a uniform fallback.
    let e = (-1f64).exp();
    close(softmax(&[1000.0, 999.0]), &[1.0 / (1.0 + e), e / (1.0 + e)]);
    // All -inf sums to 0 and +inf to inf: both fall back to uniform instead of 0/0 or inf/inf.
    close(softmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), &[0.5, 0.5]);
    close(softmax(&[f32::INFINITY, 0.0]), &[0.5, 0.5]);
}

#[test]
#[should_panic(expected = "member 1 has 5 logits, expected 2 images x 10 classes")]
fn majority_vote_names_a_short_member() {
    majority_vote(&[vec![0.0; 20], vec![0.0; 5]], 2, C);
}

#[test]
#[should_panic(expected = "member 0 has 19 logits, expected 2 images x 10 classes")]
fn soft_vote_names_a_short_member() {
    soft_vote(&[vec![0.0; 19], vec![0.0; 20]], 2, C);
}

#[test]
fn no_classes_or_no_members_give_label_zero() {
    // With members but no classes there is nothing to vote on (and nothing to index).
    assert_eq!(majority_vote(&[vec![], vec![]], 3, 0), vec![0, 0, 0]);
    assert_eq!(soft_vote(&[vec![], vec![]], 3, 0), vec![0, 0, 0]);
    assert_eq!(majority_vote(&[], 2, C), vec![0, 0]);
    assert_eq!(soft_vote(&[], 2, C), vec![0, 0]);
}

#[test]
fn soft_vote_exactly_equal_means_go_to_the_lowest_label() {
    // Mean P(7) = mean P(2) = 0.5 exactly: 2 wins, whatever the member order.
    assert_eq!(soft_vote(&[certain(7), certain(2)], 1, C), vec![2]);
    assert_eq!(soft_vote(&[certain(2), certain(7)], 1, C), vec![2]);
}
