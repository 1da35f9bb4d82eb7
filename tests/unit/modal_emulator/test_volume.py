"""modal.Volume per-container views, each test citing modal 1.6.4 `modal/volume.py`."""

from __future__ import annotations

import modal
import pytest

from tests.modal_emulator import ModalEmulator


def _vol() -> modal.Volume:
    return modal.Volume.from_name("scratch", create_if_missing=True)


def test_a_container_sees_the_volume_as_of_its_start_until_it_reloads(emu: ModalEmulator) -> None:
    """volume.py:492-494: "you need to explicitly reload the volume to see changes made since
    it was mounted ... explicitly commit any changes ... to become visible outside"."""
    vol = _vol()
    with emu.container({"/scratch": vol}) as writer:
        writer.path("/scratch/job/in.png").parent.mkdir(parents=True)
        writer.path("/scratch/job/in.png").write_bytes(b"v1")
        with emu.container({"/scratch": vol}, name="early") as reader_before:
            pass
        vol.commit()
    with emu.container({"/scratch": vol}) as reader:
        assert reader.path("/scratch/job/in.png").read_bytes() == b"v1"  # started after commit
    assert not reader_before.path("/scratch/job/in.png").exists()  # started before it


def test_uncommitted_writes_stay_in_their_container(emu: ModalEmulator) -> None:
    """volume.py:493-494: without commit, changes are not visible outside the container."""
    vol = _vol()
    with emu.container({"/scratch": vol}) as a, emu.container({"/scratch": vol}) as b:
        a.path("/scratch/x").write_text("mine")
        b_view = b.path("/scratch/x")
    assert not b_view.exists()
    assert emu.volumes[(None, "scratch")].files == {}


def test_reload_pulls_what_others_committed(emu: ModalEmulator) -> None:
    """volume.py:909-911: reload makes "latest committed state of volume available"."""
    vol = _vol()
    with emu.container({"/scratch": vol}) as reader:
        with emu.container({"/scratch": vol}) as writer:
            writer.path("/scratch/out.png").write_bytes(b"png")
            vol.commit()
        # back in the reader's input: its view is still the old one
        assert not reader.path("/scratch/out.png").exists()
        vol.reload()
        assert reader.path("/scratch/out.png").read_bytes() == b"png"


def test_reload_raises_while_a_file_is_open_in_that_container(emu: ModalEmulator) -> None:
    """volume.py:503-504 and 917: "Reloading will fail if there are open files for the volume";
    the SDK raises RuntimeError with the server's message (volume.py:926-935), e.g.
    "there are open files preventing the operation: path test.txt is open" (PR #1669)."""
    vol = _vol()
    with emu.container({"/scratch": vol}) as box:
        box.path("/scratch/job").mkdir()
        with open(box.path("/scratch/job/out.png"), "wb") as held:
            held.write(b"partial")
            with pytest.raises(
                RuntimeError,
                match=r"^there are open files preventing the operation: path job/out.png is open$",
            ):
                vol.reload()
        vol.reload()  # closed: fine


def test_an_open_file_in_another_container_does_not_block_reload(emu: ModalEmulator) -> None:
    """volume.py:503 ("open files for the volume" in *this* container): views are per container."""
    vol = _vol()
    with (
        emu.container({"/scratch": vol}) as other,
        open(other.path("/scratch/held"), "wb"),
        emu.container({"/scratch": vol}),
    ):
        vol.reload()  # in the second container: nothing of its own is open


def test_commit_also_reloads_and_so_also_fails_on_open_files(emu: ModalEmulator) -> None:
    """volume.py:900-904: after a commit the SDK reloads unless the server says skip_reload;
    that reload fails on open files, after the commit was published."""
    vol = _vol()
    with emu.container({"/scratch": vol}) as box:
        box.path("/scratch/a").write_text("a")
        blocked = pytest.raises(RuntimeError, match="open files preventing the operation")
        with open(box.path("/scratch/b"), "w"), blocked:
            vol.commit()
    assert set(emu.volumes[(None, "scratch")].files) >= {"a"}


def test_reload_implicitly_commits_local_changes(emu: ModalEmulator) -> None:
    """volume.py:914-915: "Any uncommitted changes ... may implicitly be committed when
    reloading" (the emulator takes the "may" as "are")."""
    vol = _vol()
    with emu.container({"/scratch": vol}) as box:
        box.path("/scratch/x").write_text("x")
        vol.reload()
    assert emu.volumes[(None, "scratch")].files == {"x": b"x"}


def test_last_committed_write_wins_and_deletes_publish(emu: ModalEmulator) -> None:
    """volume.py:496-498: "Last write wins in case of concurrent modification of the same file"."""
    vol = _vol()
    with emu.container({"/scratch": vol}) as seed:
        seed.path("/scratch/f").write_text("0")
        seed.path("/scratch/gone").write_text("g")
        vol.commit()
    with emu.container({"/scratch": vol}) as a, emu.container({"/scratch": vol}) as b:
        with emu.container({"/scratch": vol}):
            pass
        a.path("/scratch/f").write_text("a")
        b.path("/scratch/f").write_text("b")
        b.path("/scratch/gone").unlink()
    # commit from each container's input
    for box in (a, b):
        from tests.modal_emulator.context import InputContext, _current

        token = _current.set(InputContext(box, "fc-test"))
        try:
            vol.commit()
        finally:
            _current.reset(token)
    assert emu.volumes[(None, "scratch")].files == {"f": b"b"}


def test_commit_and_reload_need_a_container(emu: ModalEmulator) -> None:
    """volume.py:893 and 913: "Must be called inside a container that mounts the Volume"."""
    vol = _vol()
    with pytest.raises(RuntimeError, match="inside a container"):
        vol.reload()
    with emu.container({}), pytest.raises(RuntimeError, match="inside a container"):
        vol.commit()


def test_signatures_are_the_sdks(emu: ModalEmulator) -> None:
    """volume.py:889 `commit(self)`, 909 `reload(self)`: no arguments."""
    vol = _vol()
    with emu.container({"/scratch": vol}), pytest.raises(TypeError):
        vol.reload(force=True)  # type: ignore[call-arg]  # the SDK has no such parameter
