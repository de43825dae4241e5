"""Output files checked before any work: names the file system cannot
hold, folders that take no new file, tractogram extensions dipy cannot
read back, and a tractogram's provenance sidecar, which only the script
that wrote the tractogram replaces."""
import json
import os

import nibabel as nib
import numpy as np
import pytest
from file_tree import run_refused, snapshot

from dwi_ml.cli.dwiml_divide_volume_into_blocs import main as blocs_main
from dwi_ml.io_utils.atomic import name_max, write_json_atomic
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.output_folders import check_output_free
from dwi_ml.io_utils.provenance import (
    check_provenance_free,
    provenance_path,
    write_provenance,
)


def test_the_longest_name_is_written_and_a_longer_one_refused(tmp_path,
                                                              capsys):
    limit = name_max(str(tmp_path))
    volume = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 2), np.uint8), np.eye(4)),
             str(volume))
    # The temporary name adds 14 bytes: it is cut to fit instead.
    longest = tmp_path / ("b" * (limit - len(".nii.gz")) + ".nii.gz")
    blocs_main([str(volume), "2", str(longest)])
    labels = np.asarray(nib.load(str(longest)).dataobj)
    assert sorted(np.unique(labels)) == list(range(8))
    assert sorted(os.listdir(tmp_path)) == sorted(["mask.nii.gz",
                                                   longest.name])

    before = snapshot(tmp_path)
    too_long = tmp_path / ("c" * (limit - len(".nii.gz") + 1) + ".nii.gz")
    message = run_refused(blocs_main, [str(volume), "2", str(too_long)],
                          capsys)
    assert (f"expected a file name of at most {limit} bytes (the file "
            f"system's limit), found {limit + 1}.") in message
    assert snapshot(tmp_path) == before


def test_a_folder_that_takes_no_new_file_is_refused_before_work():
    # /proc: writable by root for os.access, yet no file can be made there.
    path = "/proc/dwi_ml_out.json"
    with pytest.raises(DwiMLUserError) as raised:
        check_output_free(path, True)
    expected = ("cannot create a file in '/proc'" if os.geteuid() == 0
                else "is not writable")
    assert f"output '{path}'" in str(raised.value)
    assert expected in str(raised.value)
    assert not os.path.lexists(path)


@pytest.mark.parametrize("name", ["out.TRK", "out.Tck", "out.TRX"])
def test_an_upper_case_tractogram_extension_is_refused(tmp_path, name):
    with pytest.raises(DwiMLUserError) as raised:
        check_output_free(str(tmp_path / name), False)
    assert str(raised.value) == (
        f"output '{tmp_path / name}': expected a lower-case extension "
        f"(.trk, .tck, .trx; dipy reads no other), found "
        f"'{os.path.splitext(name)[1]}'.")
    # Other files keep their case.
    check_output_free(str(tmp_path / "notes.TXT"), False)


def test_only_the_tractogram_script_replaces_its_sidecar(tmp_path):
    tractogram = tmp_path / "tracked.trk"
    tractogram.write_bytes(b"tracked")
    write_provenance(str(tractogram), {"argv": ["track"]})
    sidecar = provenance_path(str(tractogram))
    with open(sidecar) as file:
        record = file.read()
    for what in ("output", "--out_json"):
        with pytest.raises(DwiMLUserError) as raised:
            check_output_free(sidecar, True, what)
        assert str(raised.value) == (
            f"{what} '{sidecar}' is the provenance sidecar of "
            f"'{tractogram}', which dwi_ml wrote with it: refused with or "
            "without -f; give another file name.")
    # The tracking script's own check, with -f.
    check_provenance_free(str(tractogram), True)
    with open(sidecar) as file:
        assert file.read() == record
    # Any other JSON named so is an output like the others.
    other = tmp_path / "scores.trk.json"
    write_json_atomic(str(other), {"kind": "scores"})
    check_output_free(str(other), True)
    with open(other) as file:
        assert json.load(file) == {"kind": "scores"}


def test_a_long_name_without_a_format_extension_is_accepted(tmp_path):
    """Its last suffix is no format: no room is kept for it (the check
    refused a name that the write takes)."""
    limit = name_max(str(tmp_path))
    path = tmp_path / ("labels." + "b" * (limit - len("labels.")))
    check_output_free(str(path), False)
    write_json_atomic(str(path), {"labels": [1]})
    with open(path) as file:
        assert json.load(file) == {"labels": [1]}


def test_a_folder_of_the_longest_name_is_replaced_with_f(tmp_path, capsys):
    """Its previous version, .NAME.old during the swap, is cut to fit:
    the second run failed after its work with a traceback."""
    from dwi_ml.cli.dwiml_make_synthetic_dataset import main as synthetic
    limit = name_max(str(tmp_path))
    folder = tmp_path / ("s" * (limit - 2))
    tiny = ["--nb_subjects", "1", "--nb_streamlines", "5", "--nb_bundles",
            "1", "--shape", "8", "8", "8", "--nb_directions", "6"]
    synthetic([str(folder), *tiny])
    first = sorted(os.listdir(folder))
    synthetic([str(folder), *tiny, "-f", "--seed", "1"])
    assert sorted(os.listdir(folder)) == first
    assert sorted(os.listdir(tmp_path)) == [folder.name]
