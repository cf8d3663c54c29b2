"""Generated at build time from CRIU's own sources (setup.py's generate_proto; not in git):

* ``criu.binpb``: CRIU's image schemas (``images/*.proto``) compiled by protoc into a
  FileDescriptorSet, from which :mod:`fastckpt.images` makes the message classes;
* ``magic.py``: the magic numbers of CRIU's images (``criu/include/magic.h``).
"""
