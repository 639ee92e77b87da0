//! Every flag of every subcommand says what it does and what it defaults to, as users of HF
//! Trainer's `--help` expect; the HF / LLaMA-Factory names parse as aliases.

use clap::CommandFactory;

use super::Cli;

/// `(subcommand, flag, problem)` for each visible argument without a description, or taking a
/// value with no default shown, not marked required and no "default" in its text.
fn undocumented() -> (Vec<(String, String, &'static str)>, usize) {
    let mut cli = Cli::command();
    cli.build();
    let mut out = Vec::new();
    let mut checked = 0;
    let mut stack: Vec<(String, clap::Command)> = vec![("peft".into(), cli)];
    while let Some((name, cmd)) = stack.pop() {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            stack.push((format!("{name} {}", sub.get_name()), sub.clone()));
        }
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if arg.is_hide_set() || id == "help" || id == "version" {
                continue;
            }
            checked += 1;
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let flag = arg.get_long().map_or(id.to_string(), |l| format!("--{l}"));
            if help.trim().is_empty() {
                out.push((name.clone(), flag.clone(), "no description"));
            }
            let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values())
                && !matches!(
                    arg.get_action(),
                    clap::ArgAction::SetTrue | clap::ArgAction::Count
                );
            let shown = !arg.get_default_values().is_empty()
                || arg.is_required_set()
                || help.contains("default")
                || help.contains("required");
            if takes_value && !shown {
                out.push((name.clone(), flag, "no default shown"));
            }
        }
    }
    (out, checked)
}

#[test]
fn every_flag_has_a_description_and_shows_its_default() {
    let (missing, checked) = undocumented();
    assert!(
        checked > 100,
        "only {checked} arguments seen: the walk missed subcommands"
    );
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn hf_and_llama_factory_flag_names_parse_as_aliases() {
    for (alias, ours) in super::train_config::ALIASES {
        let value = match *ours {
            "lr-scheduler" => "cosine",
            "target-modules" => "q_proj",
            _ => "2",
        };
        let args = ["peft", "train", &format!("--{alias}"), value];
        let parsed = <Cli as clap::Parser>::try_parse_from(args);
        assert!(parsed.is_ok(), "--{alias}: {:?}", parsed.err());
    }
    let merge = [
        "peft",
        "merge",
        "--model",
        "m",
        "--adapter",
        "a",
        "--out",
        "o",
    ];
    assert!(<Cli as clap::Parser>::try_parse_from(merge).is_ok());
    let base = [
        "peft",
        "merge",
        "--base",
        "m",
        "--adapter",
        "a",
        "--out",
        "o",
    ];
    assert!(<Cli as clap::Parser>::try_parse_from(base).is_ok());
}
