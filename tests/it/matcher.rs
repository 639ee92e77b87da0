//! The target matcher against PEFT's rules (tuners_utils.py `check_target_module_exists`,
//! utils/other.py `get_pattern_key`), as a table.

use peft::peft::target::{pattern_value, MatchOptions, Matcher, Targets};
use rstest::rstest;

fn names(n: &[&str]) -> Targets {
    Targets::Names(n.iter().map(|s| s.to_string()).collect())
}

const Q0: &str = "model.layers.0.self_attn.q_proj";
const Q1: &str = "model.layers.1.self_attn.q_proj";
const K0: &str = "model.layers.0.self_attn.k_proj";
const DOWN1: &str = "model.layers.1.mlp.down_proj";
const HEAD: &str = "lm_head";

#[rstest]
#[case::name_matches_as_a_suffix(names(&["q_proj"]), MatchOptions::default(), Q0, true)]
#[case::name_needs_a_dot_boundary(names(&["proj"]), MatchOptions::default(), Q0, false)]
#[case::full_path_name_matches(names(&[Q0]), MatchOptions::default(), Q0, true)]
#[case::dotted_suffix_matches(names(&["self_attn.q_proj"]), MatchOptions::default(), Q1, true)]
#[case::regex_must_match_the_whole_path(Targets::Regex(r".*\.0\.self_attn\.(q|k)_proj".into()), MatchOptions::default(), K0, true)]
#[case::regex_is_not_a_search(Targets::Regex(r"q_proj".into()), MatchOptions::default(), Q0, false)]
#[case::regex_other_layer_is_not_matched(Targets::Regex(r".*\.0\.self_attn\.(q|k)_proj".into()), MatchOptions::default(), Q1, false)]
#[case::layers_to_transform_keeps_listed_layers(names(&["q_proj"]), MatchOptions { layers_to_transform: Some(vec![1]), ..Default::default() }, Q1, true)]
#[case::layers_to_transform_drops_other_layers(names(&["q_proj"]), MatchOptions { layers_to_transform: Some(vec![1]), ..Default::default() }, Q0, false)]
#[case::layers_pattern_names_the_list(names(&["q_proj"]), MatchOptions { layers_to_transform: Some(vec![0]), layers_pattern: vec!["layers".into()], ..Default::default() }, Q0, true)]
#[case::exclude_wins_over_targets(names(&["q_proj", "k_proj"]), MatchOptions { exclude: Some(names(&["k_proj"])), ..Default::default() }, K0, false)]
#[case::exclude_leaves_the_rest(names(&["q_proj", "k_proj"]), MatchOptions { exclude: Some(names(&["k_proj"])), ..Default::default() }, Q0, true)]
#[case::all_linear_takes_projections(Targets::AllLinear, MatchOptions { output_head: vec![HEAD.into()], ..Default::default() }, DOWN1, true)]
#[case::all_linear_skips_the_output_head(Targets::AllLinear, MatchOptions { output_head: vec![HEAD.into()], ..Default::default() }, HEAD, false)]
fn matcher_follows_peft_rules(
    #[case] targets: Targets,
    #[case] options: MatchOptions,
    #[case] path: &str,
    #[case] expected: bool,
) {
    let matcher = Matcher::new(&targets, options).unwrap();
    assert_eq!(
        matcher.matches(path, true),
        expected,
        "{targets:?} on {path}"
    );
}

#[rstest]
#[case::plain_name_matches_any_layer("down_proj", DOWN1, true)]
#[case::regex_key_matches_a_suffix(r"layers\.1\.mlp\.down_proj", DOWN1, true)]
#[case::key_is_anchored_at_the_end("mlp", DOWN1, false)]
#[case::other_module_is_not_matched("down_proj", Q0, false)]
fn rank_pattern_keys_match_as_regex_suffixes(
    #[case] key: &str,
    #[case] path: &str,
    #[case] expected: bool,
) {
    let patterns = vec![(key.to_string(), 2usize)];
    assert_eq!(pattern_value(&patterns, path).unwrap().is_some(), expected);
}

#[test]
fn first_matching_pattern_key_wins() {
    let patterns = vec![
        ("q_proj".to_string(), 2usize),
        (r"layers\.0\.self_attn\.q_proj".to_string(), 16),
    ];
    assert_eq!(pattern_value(&patterns, Q0).unwrap(), Some(2));
}
