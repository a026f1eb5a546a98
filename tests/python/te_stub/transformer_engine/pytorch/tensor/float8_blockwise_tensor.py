"""Stub of transformer_engine.pytorch.tensor.float8_blockwise_tensor.

Every rebuild call is checked against the TE release in $TE_STUB_VERSION and recorded in CALLS
as a dict; violations raise TypeError (so torch.load fails loudly).
"""
import os

import torch

import transformer_engine_torch as tex
from transformer_engine.pytorch import constants

CALLS = []

_QUANTIZER_KEYS = {
    'old': ['rowwise_usage', 'columnwise_usage', 'internal', 'dtype', 'block_len', 'force_pow_2_scales',
            'amax_epsilon', 'block_scaling_dim'],
    'mid': ['rowwise_usage', 'columnwise_usage', 'internal', 'dtype', 'block_len', 'force_pow_2_scales',
            'amax_epsilon', 'block_scaling_dim', 'all_gather_usage'],
    'new': ['rowwise_usage', 'columnwise_usage', 'internal', 'optimize_for_gemm', 'dtype', 'block_len',
            'force_pow_2_scales', 'amax_epsilon', 'block_scaling_dim'],
}


def stub_version():
    major, minor = os.environ.get('TE_STUB_VERSION', '2.9').split('.')
    return int(major), int(minor)


def _fail(msg):
    raise TypeError('TE stub %d.%d: %s' % (stub_version() + (msg,)))


class Float8BlockQuantizer:
    """Unpickled by NEWOBJ + BUILD(__dict__), as TE's default reduction does."""


class Float8BlockwiseQTensor:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    @classmethod
    def _make_in_reduce_ex(cls, *args):
        if stub_version() >= (2, 16):
            CALLS.append({'via': 'classmethod-legacy'})
        return _check_and_build('classmethod', args)


def _make_float8_blockwise_tensor_in_reduce_ex(*args):
    if stub_version() < (2, 16):
        _fail('module-level rebuild function does not exist before TE 2.16')
    return _check_and_build('function', args)


def _check_and_build(via, args):
    v = stub_version()
    if v < (2, 5):
        if len(args) != 9:
            _fail('expected 9 arguments, got %d' % len(args))
    elif v < (2, 12):
        if len(args) != 10:
            _fail('expected 10 arguments (data_format required), got %d' % len(args))
        fmt = args[9]
        if not isinstance(fmt, tex.Float8BlockScaleTensorFormat) or fmt.value != 0 or fmt.form != 'newobj':
            _fail('data_format must be a pybind GEMM_READY enum, got %r' % (fmt,))
    else:
        if len(args) not in (9, 10) or (len(args) == 10 and args[9] is not None):
            _fail('expected 9 arguments or 10 with None last, got %r' % (args[9:],))
    if v >= (2, 16) and via != 'function':
        _fail('TE >= 2.16 pickles the module-level rebuild function')
    if v < (2, 16) and via != 'classmethod':
        _fail('TE < 2.16 pickles the classmethod')
    shape, rdata, rscale, cdata, cscale, fp8_dtype, dtype, quantizer, is_2d = args[:9]
    if type(shape) is not torch.Size or len(shape) != 2:
        _fail('shape must be a 2-D torch.Size, got %r' % (shape,))
    if not isinstance(rdata, torch.Tensor) or rdata.dtype != torch.uint8 or tuple(rdata.shape) != tuple(shape):
        _fail('rowwise_data must be uint8 %s' % (tuple(shape),))
    m, n = shape
    rows, cols = (m + 127) // 128, (n + 127) // 128
    if (not isinstance(rscale, torch.Tensor) or rscale.dtype != torch.float32
            or tuple(rscale.shape) != (rows, (cols + 3) // 4 * 4)):
        _fail('rowwise_scale_inv must be float32 [%d, %d], got %r' % (rows, (cols + 3) // 4 * 4, rscale))
    if cdata is not None or cscale is not None:
        _fail('columnwise data/scale must be None')
    if v >= (2, 17):
        if fp8_dtype is not constants.DType.kFloat8E4M3:
            _fail('fp8_dtype must be constants.DType.kFloat8E4M3, got %r' % (fp8_dtype,))
    else:
        want = 6 if v == (2, 3) else 7
        form = 'call' if v >= (2, 16) else 'newobj'
        if not isinstance(fp8_dtype, tex.DType) or fp8_dtype.value != want or fp8_dtype.form != form:
            _fail('fp8_dtype must be pybind DType(%d) via %s, got %r (%s)' % (want, form, fp8_dtype,
                                                                              getattr(fp8_dtype, 'form', '?')))
    if not isinstance(dtype, torch.dtype):
        _fail('dtype must be a torch.dtype, got %r' % (dtype,))
    if type(quantizer) is not Float8BlockQuantizer:
        _fail('quantizer must be a Float8BlockQuantizer, got %r' % (quantizer,))
    keys = _QUANTIZER_KEYS['old' if v < (2, 5) else 'mid' if v < (2, 12) else 'new']
    if list(quantizer.__dict__) != keys:
        _fail('quantizer attributes %r, expected %r' % (list(quantizer.__dict__), keys))
    q = quantizer.__dict__
    if q['dtype'] is not fp8_dtype:
        _fail('quantizer.dtype is not the same object as fp8_dtype')
    for k, t in (('rowwise_usage', bool), ('columnwise_usage', bool), ('internal', bool), ('block_len', int),
                 ('force_pow_2_scales', bool), ('amax_epsilon', float), ('block_scaling_dim', int),
                 ('all_gather_usage', bool), ('optimize_for_gemm', bool)):
        if k in q and type(q[k]) is not t:
            _fail('quantizer.%s must be %s, got %r' % (k, t.__name__, q[k]))
    if is_2d is not True:
        _fail('is_2D_scaled must be True')
    rec = dict(via=via, nargs=len(args), shape=tuple(shape), data=rdata, scale=rscale, fp8_dtype=fp8_dtype,
               dtype=dtype, quantizer=dict(q))
    CALLS.append(rec)
    return Float8BlockwiseQTensor(**rec)
