"""The one reader of CRIU's images: its tables agree with CRIU's own schemas and magic.h, the
generated schemas load beside pycriu's, and every image of a real checkpoint decodes."""
from __future__ import annotations

import os

import pytest

from fastckpt import images
from fastckpt.errors import DamagedImage, ImageError


def test_every_image_type_has_its_magic_and_message():
    for kind, message in images.ENTRY_TYPES.items():
        assert images.magic(kind), kind  # a name of magic.h, not RAW
        assert images.message_class(message).DESCRIPTOR.name == message
    # numbers typed here from CRIU's criu/include/magic.h, against the generated table
    assert images.IMG_COMMON_MAGIC == 0x54564319 and images.IMG_SERVICE_MAGIC == 0x55105940
    assert images.magic("PSTREE") == 0x50273030 and images.magic("PAGEMAP") == 0x56084025
    assert images.magic_name(0x56084025) == "PAGEMAP" and images.magic_name(0x12345678) is None
    with pytest.raises(AttributeError):
        images.NO_SUCH_MAGIC  # noqa: B018


def test_schemas_live_beside_pycriu():
    """fastckpt's classes are in a private pool: loading pycriu's (the same .proto files) clashes with nothing."""
    pyimages = pytest.importorskip("pycriu.images")  # installed by make deps (benchmarks use it)
    e = images.message_class("pstree_entry")(pid=1, ppid=0, pgid=1, sid=1, threads=[1])
    assert pyimages.pb.pstree_entry.FromString(e.SerializeToString()).pid == 1


def test_unknown_and_wrong_images(tmp_path):
    p = tmp_path / "x.img"
    p.write_bytes(b"\x19\x43\x56\x54" + (0x12345678).to_bytes(4, "little"))
    with pytest.raises(DamagedImage, match="not a CRIU image: magic 0x12345678"):
        images.read_image(str(p))
    p.write_bytes(images.encode("PSTREE", [images.message_class("pstree_entry")(pid=1, ppid=0, pgid=1, sid=1)]))
    with pytest.raises(DamagedImage, match=r"not a CRIU core image .*of PSTREE") as ei:
        images.read_image(str(p), "CORE")
    assert ei.value.problems[0][0] == "x.img"
    assert images.read_image(str(p)).entries[0].pid == 1
    with pytest.raises(ImageError) as ei:
        images.read_image(str(tmp_path / "none.img"))
    assert not isinstance(ei.value, DamagedImage) and ei.value.errno == 2


@pytest.mark.integration
def test_every_image_of_a_real_checkpoint_decodes(container, runc_root, tmp_path):
    """All protobuf images a container's checkpoint holds decode with CRIU's schemas, extras included."""
    import ckpt_support as cs

    ct = container()
    d = str(tmp_path / "images")
    r = cs.fastckpt("--root", runc_root, "checkpoint", "--leave-running", "--image-path", d, ct.id)
    assert r.returncode == 0, r.stderr
    kinds = set()
    for name in sorted(os.listdir(d)):
        if not name.endswith(".img") or name.startswith(("pages-", "ifaddr-", "tmpfs-", "route", "rule",
                                                         "iptables", "ip6tables", "nftables")):
            continue
        img = images.read_image(os.path.join(d, name))
        kinds.add(img.kind)
    assert {"INVENTORY", "PSTREE", "CORE", "MM", "PAGEMAP", "FILES", "FDINFO", "MNTS", "IDS"} <= kinds
