//! Ensemble voting rules on hand-made logits (expected winners worked out by hand in
//! the comments).

use inference::{disagreements, majority_vote, soft_vote, DisagreementExample};

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
