"""Stub of TE's pybind11 module: enums that unpickle the way pybind11 enums do.

TE <= 2.15 pickles a member as NEWOBJ(cls) + BUILD(int) (pybind11 __setstate__); TE 2.16 as
REDUCE(cls, (int,)). `form` records which path created the object.
"""


class _PybindEnum:
    _names = {}

    def __new__(cls, *args):
        self = object.__new__(cls)
        if args:
            if len(args) != 1 or type(args[0]) is not int:
                raise TypeError('%s(%r): expected one int' % (cls.__name__, args))
            self.value = args[0]
            self.form = 'call'
        else:
            self.value = None
            self.form = 'newobj'
        return self

    def __setstate__(self, state):
        if type(state) is not int:
            raise TypeError('%s.__setstate__(%r): expected an int' % (type(self).__name__, state))
        if self.form != 'newobj' or self.value is not None:
            raise TypeError('%s: BUILD applied twice or after a call' % type(self).__name__)
        self.value = state

    @property
    def name(self):
        return self._names.get(self.value, '?')

    def __repr__(self):
        return '%s.%s(%s)' % (type(self).__name__, self.name, self.value)


class DType(_PybindEnum):
    # TE >= 2.4 numbering (2.3 has no kInt16, so kFloat8E4M3 is 6 there)
    _names = {0: 'kByte', 1: 'kInt16', 2: 'kInt32', 3: 'kInt64', 4: 'kFloat32', 5: 'kFloat16', 6: 'kBFloat16',
              7: 'kFloat8E4M3', 8: 'kFloat8E5M2'}


class Float8BlockScaleTensorFormat(_PybindEnum):
    _names = {0: 'GEMM_READY', 1: 'COMPACT'}
