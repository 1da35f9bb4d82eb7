"""Which reported files are a job's own, where ComfyUI's folders are, and what a wipe removes."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.adapters.comfy.job_files import (
    ComfyDirs,
    LaterRemover,
    copy_output,
    dirs_from_server,
    owned_outputs,
    wipe_job,
)
from app.adapters.comfy.messages import ComfyOutput

JOB = "job_" + "a" * 32
OTHER = "job_" + "b" * 32


def out(filename: str, subfolder: str = JOB, kind: str = "output") -> ComfyOutput:
    return ComfyOutput(node_id="9", filename=filename, subfolder=subfolder, type=kind)


def test_only_this_runs_files_in_the_jobs_folder_are_kept() -> None:
    mine = out("tok12345-out_00001_.png")
    preview = out("ComfyUI_temp_abcde_00001_.png", "", "temp")
    foreign = [
        out("tok12345-out_00001_.png", OTHER),  # another job's folder
        out("secret_00001_.png"),  # the job's folder, not this run's token
        out("tok12345-out_00001_.png", ""),  # the output root
        out("tok12345-x.png", f"{JOB}/../{OTHER}"),
        out("../tok12345-x.png"),
        out("tok12345-x.png", JOB, "input"),  # inputs are never delivered
        out("secret-a.png", "", "temp"),  # not a preview's name
    ]
    kept, dropped = owned_outputs([mine, preview, *foreign], JOB, "tok12345")
    assert kept == [mine, preview]
    assert dropped == foreign


def test_a_jobs_own_sub_folder_is_its_own() -> None:
    nested = out("tok12345-x_00001_.png", f"{JOB}/frames")
    assert owned_outputs([nested], JOB, "tok12345") == ([nested], [])


@pytest.mark.parametrize(
    ("argv", "folders", "expected"),
    [
        (["main.py", "--base-directory", "/b"], {}, ("/b/input", "/b/output", "/b/temp")),
        (["main.py", "--base-directory=/b"], {}, ("/b/input", "/b/output", "/b/temp")),
        (
            ["main.py"],
            {"custom_nodes": ["/src/custom_nodes"]},
            ("/src/input", "/src/output", "/src/temp"),
        ),
        (
            [
                "main.py",
                "--output-directory",
                "/o",
                "--input-directory",
                "/i",
                "--temp-directory",
                "/t",
            ],
            {"custom_nodes": ["/src/custom_nodes"]},
            ("/i", "/o", "/t/temp"),  # ComfyUI adds "temp" inside --temp-directory
        ),
    ],
)
def test_folders_come_from_what_comfyui_reports(
    argv: list[str], folders: dict[str, object], expected: tuple[str, str, str]
) -> None:
    dirs = dirs_from_server(argv, folders)
    assert dirs is not None
    assert (str(dirs.input), str(dirs.output), str(dirs.temp)) == expected


@pytest.mark.parametrize(
    ("argv", "folders"),
    [
        (["main.py"], {}),
        (["main.py", "--base-directory", "relative"], {}),
        (["main.py", "--output-directory", "out"], {"custom_nodes": ["/src/custom_nodes"]}),
    ],
)
def test_unknown_folders_are_not_guessed(argv: list[str], folders: dict[str, object]) -> None:
    assert dirs_from_server(argv, folders) is None


def test_wipe_removes_the_jobs_folders_and_previews_and_nothing_else(tmp_path: Path) -> None:
    dirs = ComfyDirs.under(tmp_path)
    for kind in ("input", "output", "temp"):
        (tmp_path / kind / JOB).mkdir(parents=True)
        (tmp_path / kind / JOB / "f.png").write_bytes(b"x")
        (tmp_path / kind / OTHER).mkdir(parents=True)
    preview = tmp_path / "temp" / "ComfyUI_temp_abcde_00001_.png"
    preview.write_bytes(b"p")
    (tmp_path / "temp" / "ComfyUI_temp_zzzzz_00001_.png").write_bytes(b"q")
    reported = [out(preview.name, "", "temp"), out("../../escape", "", "temp")]

    assert wipe_job(dirs, JOB, reported) == 4
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == [
        "input",
        f"input/{OTHER}",
        "output",
        f"output/{OTHER}",
        "temp",
        "temp/ComfyUI_temp_zzzzz_00001_.png",
        f"temp/{OTHER}",
    ]


def test_a_later_wipe_takes_the_folders_away_at_once_and_deletes_them_after(
    tmp_path: Path,
) -> None:
    dirs = ComfyDirs.under(tmp_path)
    for kind in ("input", "output", "temp"):
        (tmp_path / kind / JOB).mkdir(parents=True)
        (tmp_path / kind / JOB / "f.png").write_bytes(b"x")
        (tmp_path / kind / OTHER).mkdir(parents=True)
    # A folder parked by a process that died before deleting it
    (tmp_path / "output" / ".wiped-deadbeef").mkdir()
    (tmp_path / "output" / ".wiped-deadbeef" / "old.png").write_bytes(b"o")
    remover = LaterRemover()

    assert wipe_job(dirs, JOB, remove=remover) == 3
    assert not any((tmp_path / kind / JOB).exists() for kind in ("input", "output", "temp"))
    remover.settle()
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["input", f"input/{OTHER}", "output", f"output/{OTHER}", "temp", f"temp/{OTHER}"]


def saved(dirs: ComfyDirs, subfolder: str, filename: str, data: bytes = b"png") -> None:
    folder = dirs.output / subfolder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / filename).write_bytes(data)


def test_a_jobs_own_output_is_copied_from_comfyuis_folder(tmp_path: Path) -> None:
    dirs = ComfyDirs.under(tmp_path / "comfy")
    saved(dirs, f"{JOB}/x", "tok12345-out_00001_.png", b"\x89PNG data")
    dest = tmp_path / "staged.png"
    size = copy_output(dirs, out("tok12345-out_00001_.png", f"{JOB}/x"), JOB, dest)
    assert size == 9 and dest.read_bytes() == b"\x89PNG data"
    assert not dest.with_name("staged.png.part").exists()


def test_what_is_not_the_jobs_own_file_here_is_left_to_get_view(tmp_path: Path) -> None:
    dirs = ComfyDirs.under(tmp_path / "comfy")
    saved(dirs, OTHER, "tok12345-out_00001_.png")
    saved(dirs, "", "ComfyUI_temp_abcde_00001_.png")
    dest = tmp_path / "staged.png"
    for output in (
        out("tok12345-out_00001_.png", OTHER),  # another job's folder
        out("ComfyUI_temp_abcde_00001_.png", ""),  # the root
        out("tok12345-out_00001_.png", f"{JOB}/../{OTHER}"),
        out("../x.png"),
        out("tok12345-missing.png"),  # ComfyUI elsewhere: not on this disk
        out("tok12345-out_00001_.png", JOB, "input"),
    ):
        assert copy_output(dirs, output, JOB, dest) is None, output
    assert not dest.exists()


def test_an_output_is_never_read_through_a_link(tmp_path: Path) -> None:
    dirs = ComfyDirs.under(tmp_path / "comfy")
    secret = tmp_path / "secret.txt"
    secret.write_text("host file")
    (dirs.output / JOB).mkdir(parents=True)
    (dirs.output / JOB / "tok12345-a.png").symlink_to(secret)
    (dirs.output / JOB / "linked").symlink_to(tmp_path)  # a linked folder on the way
    (tmp_path / "tok12345-b.png").write_text("host file too")
    dest = tmp_path / "staged.png"
    assert copy_output(dirs, out("tok12345-a.png"), JOB, dest) is None
    assert copy_output(dirs, out("tok12345-b.png", f"{JOB}/linked"), JOB, dest) is None
    assert not dest.exists()
