"""nft commands run inside this process through libnftables, the library the ``nft`` tool wraps
(and CRIU links): no fork and exec per command, which on a busy host in the middle of a
checkpoint or restore costs tens of milliseconds each. Commands apply to this process's
network namespace, like ``nft`` run here."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

from crctl.errors import CrctlError

_LIBRARY = "libnftables.so.1"
_NFT_CTX_DEFAULT = 0


class NftError(CrctlError):
    """nft refused a command; the message is nft's."""


class _Library:
    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("nftables") or _LIBRARY)
        except OSError as exc:
            raise NftError(
                f"cannot load {_LIBRARY} ({exc}); install libnftables1 (deploy/setup.sh does)"
            ) from exc
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib = lib


_loaded: _Library | None = None
_lock = threading.Lock()


def _library() -> _Library:
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _Library()
        return _loaded


def run(commands: str) -> str:
    """Run ``commands`` (nft syntax, one or more lines: one transaction) and return nft's
    output; NftError with nft's message if it refused them (then nothing was applied)."""
    lib = _library().lib
    ctx = lib.nft_ctx_new(_NFT_CTX_DEFAULT)
    if not ctx:
        raise NftError("libnftables could not make a context")
    try:
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        code = lib.nft_run_cmd_from_buffer(ctx, commands.encode())
        output = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        if code != 0:
            error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
            raise NftError(f"nft: {error.strip() or f'failed ({code})'}")
        return output
    finally:
        lib.nft_ctx_free(ctx)


def available() -> str | None:
    """None when libnftables can be used here, else why not."""
    try:
        run("list tables")
    except NftError as exc:
        return exc.message
    return None
