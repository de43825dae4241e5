"""A reference dwi_ml user's train, resume, track, plot-logs and
visualize-noise command lines get a useful answer: each option we name
differently is accepted under its reference name when it means the same
with the same default, else refused in one line that says what to use here
(before any work). Parse only."""
from pathlib import Path

import pytest
from error_checks import assert_user_error

from dwi_ml.cli import (
    dwiml_track_from_model,
    dwiml_train_model,
    dwiml_visualize_noise_on_streamlines,
    resume_training_from_checkpoint,
    visualize_logs,
)
from dwi_ml.io_utils import reference_options as ref
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.script_args import (
    SameAs,
    parse_script_args,
    translate_reference_options,
)


def _scripts(tmp):
    """name -> (main, parser builder, table, same names, positionals)."""
    experiment = str(tmp / "experiments")
    hdf5 = str(tmp / "data.hdf5")
    return {
        "train": (dwiml_train_model.main, dwiml_train_model.build_parser,
                  ref.TRAIN_REFERENCE_OPTIONS, ref.TRAIN_SAME_NAMES,
                  [experiment, "exp", hdf5, "input", "streamlines"]),
        "resume": (resume_training_from_checkpoint.main,
                   resume_training_from_checkpoint.build_parser,
                   ref.RESUME_REFERENCE_OPTIONS, ref.RESUME_SAME_NAMES,
                   [experiment, "exp"]),
        "track": (dwiml_track_from_model.main,
                  dwiml_track_from_model._build_parser,
                  ref.TRACK_REFERENCE_OPTIONS, ref.TRACK_SAME_NAMES,
                  [experiment, hdf5, "sub-01", "input",
                   str(tmp / "out.trk")]),
        "visualize_logs": (visualize_logs.main, visualize_logs._build_parser,
                           ref.VISUALIZE_LOGS_REFERENCE_OPTIONS,
                           ref.VISUALIZE_LOGS_SAME_NAMES, [experiment]),
        "visualize_noise": (dwiml_visualize_noise_on_streamlines.main,
                            dwiml_visualize_noise_on_streamlines._build_parser,
                            ref.VISUALIZE_NOISE_REFERENCE_OPTIONS,
                            ref.VISUALIZE_NOISE_SAME_NAMES,
                            [hdf5, "sub-01", "streamlines",
                             str(tmp / "out.trk")]),
    }


# The tables and parsers, for parametrising (paths are never read).
_SCRIPTS = _scripts(Path("unused"))


def _entries(kind):
    return [(script, option, meaning)
            for script, (_, _, table, _, _) in _SCRIPTS.items()
            for option, meaning in table.items() if isinstance(meaning, kind)]


# Values given to each alias and to our option in the alias tests.
ALIAS_VALUES = {
    ("train", "--rng"): ["7"],
    ("train", "--tracking_mask"): ["wm_mask"],
    ("train", "--prev_dirs_embedded_size"): ["5"],
    ("train", "--dg_nb_gaussians"): ["4"],
    ("train", "--dropout_rate"): ["0.25"],
    ("track", "--compress"): ["0.3"],
    ("visualize_logs", "--show_now"): [],
    ("visualize_logs", "--ylims"): ["0", "2.5"],
}


def _our_options(parser):
    return {name for action in parser._actions
            for name in action.option_strings}


def test_every_alias_is_tested():
    assert {(script, option) for script, option, _ in _entries(SameAs)} \
        == set(ALIAS_VALUES)


@pytest.mark.parametrize("script, option, hint", _entries(str))
def test_reference_option_says_what_to_use(tmp_path, capsys, script, option,
                                           hint):
    main, build, _, _, positionals = _scripts(tmp_path)[script]
    assert option not in _our_options(build()), "would hide our option"
    message = assert_user_error(main, [*positionals, option, "1"], capsys,
                                str(tmp_path), option, "reference", hint)
    assert message.endswith(f"{hint}.")


@pytest.mark.parametrize("script, option, values", _entries(dict))
def test_reference_choice_value_says_what_to_use(tmp_path, capsys, script,
                                                 option, values):
    main, build, _, _, positionals = _scripts(tmp_path)[script]
    assert option in _our_options(build())
    for value, hint in values.items():
        # Both spellings argparse takes: '--opt value' and '--opt=value'.
        for argv in ([option, value], [f"{option}={value}"]):
            assert_user_error(main, [*positionals, *argv], capsys,
                              str(tmp_path), f"argument {option}: invalid "
                              f"choice: '{value}'", "reference", hint)


@pytest.mark.parametrize("script, option", sorted(ALIAS_VALUES))
def test_alias_reaches_our_option(tmp_path, script, option):
    _, build, table, _, positionals = _scripts(tmp_path)[script]
    ours = table[option].option
    assert option not in _our_options(build())
    assert ours in _our_options(build())
    values = ALIAS_VALUES[(script, option)]

    def parse(*argv):
        # Not the arguments as typed, which record the alias itself.
        parsed = vars(parse_script_args(build(), [*positionals, *argv],
                                        reference_options=table))
        return {key: value for key, value in parsed.items() if key != "argv"}

    expected = parse(ours, *values)
    assert parse(option, *values) == expected
    assert expected != parse(), "the test values must change the option"
    if len(values) == 1:
        assert parse(f"{option}={values[0]}") == expected


@pytest.mark.parametrize("script", sorted(_SCRIPTS))
def test_same_names_are_ours(tmp_path, script):
    _, build, table, same_names, _ = _scripts(tmp_path)[script]
    ours = _our_options(build())
    assert set(same_names) <= ours
    refused = {option for option, meaning in table.items()
               if not isinstance(meaning, dict)}
    assert not refused & set(same_names)


def test_translation_stops_at_double_dash_and_keeps_other_tokens():
    table = {"--rng": SameAs("--seed"), "--use_gpu": "use --device cuda",
             "--dg_key": {"old": "use new"}}
    argv = ["a", "--rng", "3", "--dg_key", "new", "--", "--use_gpu"]
    assert translate_reference_options(argv, table) == [
        "a", "--seed", "3", "--dg_key", "new", "--", "--use_gpu"]
    with pytest.raises(DwiMLUserError, match="--use_gpu"):
        translate_reference_options(["--use_gpu"], table)
    # A choice given last, without its value, is left to argparse.
    assert translate_reference_options(["--dg_key"], table) == ["--dg_key"]


def test_reference_seeding_mask_positional_says_what_to_use(tmp_path,
                                                            capsys):
    # The reference's track command: ... INPUT_GROUP SEEDING_MASK OUT.
    out = tmp_path / "out.trk"
    with pytest.raises(SystemExit) as error:
        dwiml_track_from_model.main([
            str(tmp_path / "exp"), "data.hdf5", "subj-01", "input",
            "wm_mask", str(out)])
    assert error.value.code == 2
    message = capsys.readouterr().err.strip()
    # (The program's name is pytest's here.)
    assert message.split(": error: ", 1)[1] == (
        "positional arguments: expected "
        "the output tractogram after the input group, found 'wm_mask' then "
        f"'{out}' (the reference's seeding mask positional): give "
        "--seeding_mask_group wm_mask and end with the output.")
    assert not out.exists()


@pytest.mark.parametrize("tail", [["out.trk", "out2.trk"],
                                  ["out.trk", "--", "x.trk"]])
def test_two_tractograms_are_not_taken_for_a_seeding_mask(tmp_path, capsys,
                                                          tail):
    with pytest.raises(SystemExit) as error:
        dwiml_track_from_model.main([str(tmp_path / "exp"), "data.hdf5",
                                     "subj-01", "input", *tail])
    assert error.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.endswith(f"unrecognized arguments: {tail[-1]} (see "
                            "--help).")
