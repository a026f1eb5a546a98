#pragma once
// Safe unpickler (protocols 0-5 opcodes, as torch.save, TE and DCP produce them). It never imports
// or calls anything: GLOBALs are recorded as names and calls become inspectable nodes. A few
// callables with known, harmless meaning are interpreted (file-formats.md §2.2, §2.3, §2.6):
// torch tensors (_rebuild_tensor_v2/v3, parameters, _rebuild_from_type_v2), torch.Size,
// collections.OrderedDict, argparse.Namespace / types.SimpleNamespace, _codecs.encode (bytes),
// bytearray/set/frozenset. Everything else stays an opaque Call/NewObj node for callers.
//
// Memory and time are bounded by the input: lengths are checked against the remaining bytes, the
// object graph is kept acyclic (a container may only be filled before it is placed in another
// object, which is how every pickler emits non-recursive data) and its depth and expanded size
// are capped, so walking the result can neither loop nor blow up.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ckbridge/core/dtype.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/core/shape.hpp"

namespace ckbridge::pickle {

enum class Kind : std::uint8_t {
  None, Bool, Int, BigInt, Float, Str, Bytes,
  List, Tuple, Dict, Set,
  Global,     // module + name, never resolved
  Call,       // callable(*args): REDUCE of an unknown callable; `state` set by BUILD
  NewObj,     // cls.__new__(cls, *args): NEWOBJ/NEWOBJ_EX of an unknown class; `state` set by BUILD
  Namespace,  // argparse.Namespace / types.SimpleNamespace: attributes in `dict`
  Storage,    // persistent id ('storage', type, key, location, numel)
  Tensor,
};

std::string_view kind_name(Kind k);

// A torch storage referenced by a persistent id; its bytes are record `data/<key>`.
struct StorageRef {
  std::string key;
  std::string type_name;     // "BFloat16Storage", "UntypedStorage", ...
  std::optional<DType> dtype;  // element type of the storage class (U8 for UntypedStorage)
  std::size_t element_size = 1;
  std::string location;      // "cpu", "cuda:0", ...
  std::int64_t numel = 0;    // in storage elements
  std::uint64_t nbytes() const { return static_cast<std::uint64_t>(numel) * element_size; }
};

struct Object;
using ObjectPtr = std::shared_ptr<Object>;

// Tensor described by the pickle: dtype/shape/strides/offset (in elements) into a storage.
struct TensorRef {
  std::optional<DType> dtype;  // empty for dtypes ckbridge has no type for (complex, uint16, ...)
  std::string dtype_name;      // torch name, e.g. "bfloat16"
  Shape shape, strides;
  std::int64_t storage_offset = 0;
  StorageRef storage;
  bool requires_grad = false;
  bool is_parameter = false;
  ObjectPtr attributes;        // _rebuild_from_type_v2 attribute dict / parameter state, else null
  std::int64_t numel() const { return ckbridge::numel(shape); }
};

struct Object {
  Kind kind = Kind::None;
  bool b = false;
  std::int64_t i = 0;
  double f = 0;
  std::string s;       // Str (UTF-8), Bytes, BigInt (decimal), Global: module
  std::string name;    // Global: attribute name; Dict: class name when not plain dict
  std::vector<ObjectPtr> items;                          // List, Tuple, Set
  std::vector<std::pair<ObjectPtr, ObjectPtr>> dict;     // Dict, Namespace (keys are Str)
  ObjectPtr callable;  // Call: the callable; NewObj/Namespace: the class Global
  ObjectPtr args;      // Call/NewObj: argument Tuple (NEWOBJ_EX: (args, kwargs))
  ObjectPtr state;     // BUILD state (Call, NewObj, Dict of OrderedDict)
  std::shared_ptr<StorageRef> storage;  // Storage
  std::shared_ptr<TensorRef> tensor;    // Tensor
  // bookkeeping for the bounds (see file comment)
  std::uint32_t depth = 0;      // longest chain of children below
  std::uint64_t weight = 1;     // nodes in the fully expanded tree
  bool contained = false;       // already a child of another object

  bool is(Kind k) const { return kind == k; }
  bool is_none() const { return kind == Kind::None; }
  bool is_global(std::string_view module, std::string_view nm) const {
    return kind == Kind::Global && s == module && name == nm;
  }
  std::string qualified_name() const { return s + "." + name; }  // Global
  // Typed accessors: throw ckbridge::Error naming `what` when the kind does not match.
  std::int64_t as_int(std::string_view what = "value") const;
  double as_float(std::string_view what = "value") const;  // Int or Float
  bool as_bool(std::string_view what = "value") const;
  const std::string& as_str(std::string_view what = "value") const;
  // Dict/Namespace lookup by string key (linear, keeps file order); null when absent.
  ObjectPtr get(std::string_view key) const;
};

struct Limits {
  std::uint32_t max_depth = 256;                 // nesting of containers/calls
  std::uint64_t max_weight = std::uint64_t{1} << 32;  // expanded-tree node count
  std::size_t max_bigint_bytes = 4096;
};

std::string describe(const Object& o, std::size_t max_chars = 200);  // short repr for messages

namespace detail {

inline std::string_view op_name(unsigned op) {
  switch (op) {
    case '(': return "MARK"; case '.': return "STOP"; case '0': return "POP"; case '1': return "POP_MARK";
    case '2': return "DUP"; case 'F': return "FLOAT"; case 'I': return "INT"; case 'J': return "BININT";
    case 'K': return "BININT1"; case 'L': return "LONG"; case 'M': return "BININT2"; case 'N': return "NONE";
    case 'P': return "PERSID"; case 'Q': return "BINPERSID"; case 'R': return "REDUCE"; case 'S': return "STRING";
    case 'T': return "BINSTRING"; case 'U': return "SHORT_BINSTRING"; case 'V': return "UNICODE";
    case 'X': return "BINUNICODE"; case 'a': return "APPEND"; case 'b': return "BUILD"; case 'c': return "GLOBAL";
    case 'd': return "DICT"; case '}': return "EMPTY_DICT"; case 'e': return "APPENDS"; case 'g': return "GET";
    case 'h': return "BINGET"; case 'i': return "INST"; case 'j': return "LONG_BINGET"; case 'l': return "LIST";
    case ']': return "EMPTY_LIST"; case 'o': return "OBJ"; case 'p': return "PUT"; case 'q': return "BINPUT";
    case 'r': return "LONG_BINPUT"; case 's': return "SETITEM"; case 't': return "TUPLE"; case ')': return "EMPTY_TUPLE";
    case 'u': return "SETITEMS"; case 'G': return "BINFLOAT"; case 0x80: return "PROTO"; case 0x81: return "NEWOBJ";
    case 0x82: return "EXT1"; case 0x83: return "EXT2"; case 0x84: return "EXT4"; case 0x85: return "TUPLE1";
    case 0x86: return "TUPLE2"; case 0x87: return "TUPLE3"; case 0x88: return "NEWTRUE"; case 0x89: return "NEWFALSE";
    case 0x8a: return "LONG1"; case 0x8b: return "LONG4"; case 'B': return "BINBYTES"; case 'C': return "SHORT_BINBYTES";
    case 0x8c: return "SHORT_BINUNICODE"; case 0x8d: return "BINUNICODE8"; case 0x8e: return "BINBYTES8";
    case 0x8f: return "EMPTY_SET"; case 0x90: return "ADDITEMS"; case 0x91: return "FROZENSET"; case 0x92: return "NEWOBJ_EX";
    case 0x93: return "STACK_GLOBAL"; case 0x94: return "MEMOIZE"; case 0x95: return "FRAME"; case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER"; case 0x98: return "READONLY_BUFFER";
    default: return "unknown";
  }
}

// Little-endian two's complement -> decimal text.
inline std::string le_to_decimal(std::span<const std::uint8_t> le) {
  std::vector<std::uint8_t> mag(le.begin(), le.end());
  const bool neg = !mag.empty() && (mag.back() & 0x80);
  if (neg) {  // negate: invert and add one
    unsigned carry = 1;
    for (auto& b : mag) {
      unsigned v = static_cast<std::uint8_t>(~b) + carry;
      b = static_cast<std::uint8_t>(v);
      carry = v >> 8;
    }
  }
  std::string digits;
  while (true) {
    while (!mag.empty() && mag.back() == 0) mag.pop_back();
    if (mag.empty()) break;
    unsigned rem = 0;
    for (std::size_t k = mag.size(); k-- > 0;) {
      const unsigned cur = (rem << 8) | mag[k];
      mag[k] = static_cast<std::uint8_t>(cur / 10);
      rem = cur % 10;
    }
    digits.push_back(static_cast<char>('0' + rem));
  }
  if (digits.empty()) digits = "0";
  if (neg) digits.push_back('-');
  return {digits.rbegin(), digits.rend()};
}

inline void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) out.push_back(static_cast<char>(cp));
  else if (cp < 0x800) { out.push_back(static_cast<char>(0xC0 | (cp >> 6))); out.push_back(static_cast<char>(0x80 | (cp & 0x3F))); }
  else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// UTF-8 text whose code points are all <= 0xFF -> one byte each (_codecs.encode(s, 'latin1')).
inline std::optional<std::string> utf8_to_latin1(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t k = 0; k < s.size();) {
    const auto c = static_cast<unsigned char>(s[k]);
    if (c < 0x80) { out.push_back(static_cast<char>(c)); ++k; }
    else if ((c & 0xE0) == 0xC0 && k + 1 < s.size() && (static_cast<unsigned char>(s[k + 1]) & 0xC0) == 0x80) {
      const unsigned cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(s[k + 1]) & 0x3Fu);
      if (cp > 0xFF) return std::nullopt;
      out.push_back(static_cast<char>(cp));
      k += 2;
    } else {
      return std::nullopt;
    }
  }
  return out;
}

// Storage class name -> element type (file-formats.md §2.2).
inline std::optional<DType> storage_dtype(std::string_view type_name, std::size_t& elsize) {
  if (type_name == "UntypedStorage") { elsize = 1; return DType::U8; }
  if (auto d = dtype_from_torch_storage(type_name)) { elsize = dtype_size(*d); return d; }
  struct Other { std::string_view n; std::size_t sz; };
  static constexpr Other others[] = {{"ComplexFloatStorage", 8}, {"ComplexDoubleStorage", 16}, {"QInt8Storage", 1},
                                     {"QUInt8Storage", 1}, {"QInt32Storage", 4}, {"QUInt4x2Storage", 1},
                                     {"QUInt2x4Storage", 1}};
  for (const auto& o : others)
    if (o.n == type_name) { elsize = o.sz; return std::nullopt; }
  elsize = 0;
  return std::nullopt;
}

// Element size of torch dtypes without a ckbridge DType (so views can still be bounds-checked).
inline std::size_t torch_dtype_size(std::string_view n) {
  if (auto d = dtype_from_torch_dtype(n)) return dtype_size(*d);
  if (n == "complex128" || n == "cdouble") return 16;
  if (n == "complex64" || n == "cfloat" || n == "uint64") return 8;
  if (n == "complex32" || n == "chalf" || n == "uint32" || n == "qint32") return 4;
  if (n == "uint16") return 2;
  if (n == "float8_e4m3fnuz" || n == "float8_e5m2fnuz" || n == "float4_e2m1fn_x2" || n == "quint8" || n == "qint8")
    return 1;
  return 0;
}

}  // namespace detail

class Unpickler {
public:
  // `source` names the stream in messages, e.g. "dir/model_optim_rng.pt:data.pkl".
  Unpickler(std::span<const std::byte> data, std::string source, Limits limits = {})
      : p_(reinterpret_cast<const std::uint8_t*>(data.data())), n_(data.size()), source_(std::move(source)),
        limits_(limits) {}

  ObjectPtr load() {
    while (true) {
      if (pos_ >= n_) fail(source_, ": pickle ends at offset ", pos_, " without STOP (truncated?)");
      op_off_ = pos_;
      const unsigned op = p_[pos_++];
      if (op == '.') {
        if (stack_.size() != 1 || !marks_.empty())
          err("STOP with ", stack_.size(), " stack items and ", marks_.size(), " open marks");
        return stack_.back();
      }
      step(op);
    }
  }

  // Tensors found, in the order they were built (includes tensors nested in opaque objects).
  std::size_t tensors_seen() const { return tensors_seen_; }

private:
  template <class... A>
  [[noreturn]] void err(A&&... a) const {
    fail(source_, ": pickle opcode ", detail::op_name(p_[op_off_]), " at offset ", op_off_, ": ", std::forward<A>(a)...);
  }

  // ---- input
  std::span<const std::uint8_t> take(std::uint64_t k) {
    if (k > n_ - pos_) err("length ", k, " runs past the end of the stream (", n_ - pos_, " bytes left)");
    std::span<const std::uint8_t> s(p_ + pos_, static_cast<std::size_t>(k));
    pos_ += static_cast<std::size_t>(k);
    return s;
  }
  std::uint64_t le(unsigned bytes) {
    auto s = take(bytes);
    std::uint64_t v = 0;
    for (unsigned k = bytes; k-- > 0;) v = (v << 8) | s[k];
    return v;
  }
  std::string_view line() {
    const void* nl = std::memchr(p_ + pos_, '\n', n_ - pos_);
    if (!nl) err("missing newline");
    const std::size_t len = static_cast<const std::uint8_t*>(nl) - (p_ + pos_);
    std::string_view s(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len + 1;
    if (!s.empty() && s.back() == '\r') s.remove_suffix(1);
    return s;
  }
  std::string text(std::uint64_t k) {
    auto s = take(k);
    return std::string(reinterpret_cast<const char*>(s.data()), s.size());
  }

  // ---- object construction
  static ObjectPtr make(Kind k) {
    auto o = std::make_shared<Object>();
    o->kind = k;
    return o;
  }
  ObjectPtr make_int(std::int64_t v) { auto o = make(Kind::Int); o->i = v; return o; }
  ObjectPtr make_str(std::string v, Kind k = Kind::Str) { auto o = make(k); o->s = std::move(v); return o; }

  // Record that `parent` now holds `child`; keeps the graph acyclic and bounded.
  void adopt(Object& parent, const ObjectPtr& child) {
    if (!child) err("internal: null child");
    if (child.get() == &parent) err("object would contain itself (recursive pickle)");
    child->contained = true;
    parent.depth = std::max<std::uint32_t>(parent.depth, child->depth + 1);
    if (parent.depth > limits_.max_depth) err("nesting deeper than ", limits_.max_depth, " levels");
    parent.weight += child->weight;
    if (parent.weight > limits_.max_weight) err("object graph expands to more than ", limits_.max_weight, " nodes");
  }
  // A container may only be filled while no other object holds it (see file comment).
  void check_mutable(const Object& o) {
    if (o.contained) err("modifies a ", kind_name(o.kind), " that is already inside another object (reference cycle)");
  }

  void push(ObjectPtr o) {
    if (stack_.size() >= kMaxStack) err("stack deeper than ", kMaxStack);
    stack_.push_back(std::move(o));
  }
  ObjectPtr pop() {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) err("stack underflow");
    ObjectPtr o = std::move(stack_.back());
    stack_.pop_back();
    return o;
  }
  ObjectPtr& top() {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) err("stack underflow");
    return stack_.back();
  }
  std::vector<ObjectPtr> pop_mark() {
    if (marks_.empty()) err("no MARK on the stack");
    const std::size_t m = marks_.back();
    marks_.pop_back();
    std::vector<ObjectPtr> v(std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(m)),
                             std::make_move_iterator(stack_.end()));
    stack_.resize(m);
    return v;
  }
  ObjectPtr make_tuple(std::vector<ObjectPtr> v) {
    auto t = make(Kind::Tuple);
    for (auto& x : v) adopt(*t, x);
    t->items = std::move(v);
    return t;
  }
  ObjectPtr make_global(std::string module, std::string nm) {
    // protocol-2 names of Python 3 modules (pickle's compat mapping, the cases torch meets)
    if (module == "__builtin__") module = "builtins";
    else if (module == "copy_reg") module = "copyreg";
    auto g = make(Kind::Global);
    g->s = std::move(module);
    g->name = std::move(nm);
    return g;
  }

  // Picklers number memo entries densely from 0: keep those in a vector, stray ids in a map.
  void memo_put(std::uint64_t idx) {
    if (idx < dense_memo_.size() + 64 && idx < kMaxMemo) {
      if (idx >= dense_memo_.size()) dense_memo_.resize(idx + 1);
      dense_memo_[idx] = top();
      return;
    }
    if (sparse_memo_.size() >= kMaxMemo && !sparse_memo_.count(idx)) err("more than ", kMaxMemo, " memo entries");
    sparse_memo_[idx] = top();
  }
  std::uint64_t memo_size() const { return dense_memo_.size() + sparse_memo_.size(); }
  ObjectPtr memo_get(std::uint64_t idx) {
    if (idx < dense_memo_.size() && dense_memo_[idx]) return dense_memo_[idx];
    auto it = sparse_memo_.find(idx);
    if (it == sparse_memo_.end()) err("memo key ", idx, " was never stored");
    return it->second;
  }

  void set_items(Object& d, std::vector<ObjectPtr>& kv) {
    if (d.kind != Kind::Dict) err("target is a ", kind_name(d.kind), ", not a dict");
    check_mutable(d);
    if (kv.size() % 2) err("odd number of items for SETITEMS");
    for (std::size_t k = 0; k < kv.size(); k += 2) {
      adopt(d, kv[k]);
      adopt(d, kv[k + 1]);
      d.dict.emplace_back(std::move(kv[k]), std::move(kv[k + 1]));
    }
  }
  void append_items(Object& l, std::vector<ObjectPtr>& v, Kind want) {
    if (l.kind != want) err("target is a ", kind_name(l.kind), ", not a ", kind_name(want));
    check_mutable(l);
    for (auto& x : v) {
      adopt(l, x);
      l.items.push_back(std::move(x));
    }
  }

  void step(unsigned op) {
    switch (op) {
      case 0x80: {  // PROTO
        const auto v = le(1);
        if (v > 5) err("unsupported pickle protocol ", v);
        return;
      }
      case 0x95: le(8); return;  // FRAME: framing is transparent
      case '(': marks_.push_back(stack_.size()); if (marks_.size() > kMaxStack) err("too many MARKs"); return;
      case 'N': push(make(Kind::None)); return;
      case 0x88: case 0x89: { auto o = make(Kind::Bool); o->b = op == 0x88; push(o); return; }
      case 'K': push(make_int(static_cast<std::int64_t>(le(1)))); return;
      case 'M': push(make_int(static_cast<std::int64_t>(le(2)))); return;
      case 'J': push(make_int(static_cast<std::int32_t>(static_cast<std::uint32_t>(le(4))))); return;
      case 0x8a: case 0x8b: {  // LONG1 / LONG4
        const std::uint64_t k = op == 0x8a ? le(1) : le(4);
        if (k > limits_.max_bigint_bytes) err("integer of ", k, " bytes exceeds the limit");
        auto s = take(k);
        if (k <= 8) {
          std::uint64_t v = 0;
          for (std::size_t q = k; q-- > 0;) v = (v << 8) | s[q];
          if (k > 0 && k < 8 && (s[k - 1] & 0x80)) v |= ~std::uint64_t{0} << (8 * k);  // sign-extend
          push(make_int(static_cast<std::int64_t>(v)));
        } else {
          push(make_str(detail::le_to_decimal(s), Kind::BigInt));
        }
        return;
      }
      case 'I': case 'L': {  // text integers (protocol 0)
        std::string_view t = line();
        if (op == 'L' && !t.empty() && t.back() == 'L') t.remove_suffix(1);
        if (op == 'I' && (t == "00" || t == "01")) { auto o = make(Kind::Bool); o->b = t == "01"; push(o); return; }
        std::size_t q = (!t.empty() && (t[0] == '-' || t[0] == '+')) ? 1 : 0;
        if (q == t.size()) err("malformed integer '", t, "'");
        for (std::size_t r = q; r < t.size(); ++r)
          if (t[r] < '0' || t[r] > '9') err("malformed integer '", t, "'");
        if (t.size() - q > 18) {
          if (t.size() > limits_.max_bigint_bytes) err("integer text too long");
          push(make_str(std::string(t[0] == '+' ? t.substr(1) : t), Kind::BigInt));
        } else {
          std::int64_t v = 0;
          for (std::size_t r = q; r < t.size(); ++r) v = v * 10 + (t[r] - '0');
          push(make_int(t[0] == '-' ? -v : v));
        }
        return;
      }
      case 'G': {
        const std::uint64_t be = le(8);
        std::uint64_t v = 0;
        for (int k = 0; k < 8; ++k) v = (v << 8) | ((be >> (8 * k)) & 0xFF);  // big-endian on the wire
        double d;
        std::memcpy(&d, &v, 8);
        auto o = make(Kind::Float);
        o->f = d;
        push(o);
        return;
      }
      case 'F': {
        const std::string t(line());
        char* end = nullptr;
        const double d = std::strtod(t.c_str(), &end);
        if (t.empty() || end != t.c_str() + t.size()) err("malformed float '", t, "'");
        auto o = make(Kind::Float);
        o->f = d;
        push(o);
        return;
      }
      case 'X': push(make_str(text(le(4)))); return;
      case 0x8c: push(make_str(text(le(1)))); return;
      case 0x8d: push(make_str(text(le(8)))); return;
      case 'U': push(make_str(text(le(1)))); return;  // py2 str: kept as text, like Python 3's default
      case 'T': push(make_str(text(le(4)))); return;
      case 'C': push(make_str(text(le(1)), Kind::Bytes)); return;
      case 'B': push(make_str(text(le(4)), Kind::Bytes)); return;
      case 0x8e: case 0x96: push(make_str(text(le(8)), Kind::Bytes)); return;
      case ')': push(make(Kind::Tuple)); return;
      case ']': push(make(Kind::List)); return;
      case '}': push(make(Kind::Dict)); return;
      case 0x8f: push(make(Kind::Set)); return;
      case 't': push(make_tuple(pop_mark())); return;
      case 0x85: case 0x86: case 0x87: {
        const std::size_t k = op - 0x84;
        std::vector<ObjectPtr> v(k);
        for (std::size_t q = k; q-- > 0;) v[q] = pop();
        push(make_tuple(std::move(v)));
        return;
      }
      case 'l': { auto v = pop_mark(); auto l = make(Kind::List); append_items(*l, v, Kind::List); push(l); return; }
      case 'd': { auto v = pop_mark(); auto d = make(Kind::Dict); set_items(*d, v); push(d); return; }
      case 0x91: { auto v = pop_mark(); auto s = make(Kind::Set); append_items(*s, v, Kind::Set); push(s); return; }
      case 'a': { auto x = pop(); std::vector<ObjectPtr> v{std::move(x)}; append_items(*top(), v, Kind::List); return; }
      case 'e': { auto v = pop_mark(); append_items(*top(), v, Kind::List); return; }
      case 0x90: { auto v = pop_mark(); append_items(*top(), v, Kind::Set); return; }
      case 's': {
        auto val = pop();
        auto key = pop();
        std::vector<ObjectPtr> kv{std::move(key), std::move(val)};
        set_items(*top(), kv);
        return;
      }
      case 'u': { auto kv = pop_mark(); set_items(*top(), kv); return; }
      case '0': pop(); return;
      case '1': pop_mark(); return;
      case '2': push(top()); return;
      case 'q': memo_put(le(1)); return;
      case 'r': memo_put(le(4)); return;
      case 0x94: memo_put(memo_size()); return;
      case 'p': memo_put(parse_index(line())); return;
      case 'h': push(memo_get(le(1))); return;
      case 'j': push(memo_get(le(4))); return;
      case 'g': push(memo_get(parse_index(line()))); return;
      case 'c': {
        std::string module(line());
        std::string nm(line());
        push(make_global(std::move(module), std::move(nm)));
        return;
      }
      case 0x93: {  // STACK_GLOBAL
        auto nm = pop();
        auto module = pop();
        if (module->kind != Kind::Str || nm->kind != Kind::Str) err("module and name must be strings");
        push(make_global(module->s, nm->s));
        return;
      }
      case 'R': {
        auto args = pop();
        auto fn = pop();
        push(reduce(fn, args));
        return;
      }
      case 0x81: {
        auto args = pop();
        auto cls = pop();
        push(newobj(cls, args, nullptr));
        return;
      }
      case 0x92: {
        auto kwargs = pop();
        auto args = pop();
        auto cls = pop();
        push(newobj(cls, args, kwargs));
        return;
      }
      case 'b': {
        auto st = pop();
        build(*top(), st);
        return;
      }
      case 'Q': { auto pid = pop(); push(persistent(pid)); return; }
      case 'P': err("text persistent ids are not used by torch.save and are refused");
      default: err("unsupported or unknown opcode 0x", to_hex(op));
    }
  }

  static std::string to_hex(unsigned v) {
    static const char* h = "0123456789abcdef";
    return std::string{h[(v >> 4) & 15], h[v & 15]};
  }
  std::uint64_t parse_index(std::string_view t) {
    if (t.empty() || t.size() > 10) err("malformed memo index '", t, "'");
    std::uint64_t v = 0;
    for (char c : t) {
      if (c < '0' || c > '9') err("malformed memo index '", t, "'");
      v = v * 10 + static_cast<std::uint64_t>(c - '0');
    }
    return v;
  }

  // ---- interpretation of known callables
  const Object& arg(const ObjectPtr& args, std::size_t k, const char* fn) {
    if (args->kind != Kind::Tuple || args->items.size() <= k) err(fn, ": expected at least ", k + 1, " arguments");
    return *args->items[k];
  }
  Shape int_tuple(const Object& t, const char* what) {
    if (t.kind != Kind::Tuple && t.kind != Kind::List) err(what, " is a ", kind_name(t.kind), ", not a tuple");
    Shape s;
    for (const auto& x : t.items) {
      if (x->kind != Kind::Int) err(what, " holds a ", kind_name(x->kind), ", not an int");
      s.push_back(x->i);
    }
    return s;
  }

  ObjectPtr reduce(const ObjectPtr& fn, const ObjectPtr& args) {
    if (args->kind != Kind::Tuple) err("REDUCE arguments are a ", kind_name(args->kind), ", not a tuple");
    if (fn->kind == Kind::Global) {
      const std::string& m = fn->s;
      const std::string& nm = fn->name;
      if (m == "torch._utils" && (nm == "_rebuild_tensor_v2" || nm == "_rebuild_tensor_v3" || nm == "_rebuild_tensor"))
        return rebuild_tensor(nm, args);
      if (m == "torch._utils" && (nm == "_rebuild_parameter" || nm == "_rebuild_parameter_with_state")) {
        const Object& t = arg(args, 0, nm.c_str());
        if (t.kind != Kind::Tensor) err(nm, ": first argument is a ", kind_name(t.kind), ", not a tensor");
        if (nm == "_rebuild_parameter_with_state") arg(args, 3, nm.c_str());
        auto o = clone_tensor(t);
        o->tensor->is_parameter = true;
        o->tensor->requires_grad = arg(args, 1, nm.c_str()).kind == Kind::Bool && arg(args, 1, nm.c_str()).b;
        if (nm == "_rebuild_parameter_with_state") attach_attributes(*o, args->items[3]);
        return o;
      }
      if (m == "torch._tensor" && nm == "_rebuild_from_type_v2") {
        // (func, new_type, args, state): apply func to args, keep the attribute dict.
        arg(args, 2, nm.c_str());
        auto t = reduce(args->items[0], args->items[2]);
        if (t->kind != Kind::Tensor) return make_call(fn, args);
        auto o = clone_tensor(*t);
        if (args->items.size() > 3) attach_attributes(*o, args->items[3]);
        return o;
      }
      if (m == "collections" && nm == "OrderedDict") {
        auto d = make(Kind::Dict);
        d->name = "collections.OrderedDict";
        if (!args->items.empty()) {  // OrderedDict([(k, v), ...])
          const Object& pairs = *args->items[0];
          if (pairs.kind != Kind::List && pairs.kind != Kind::Tuple) err("OrderedDict argument is not a list of pairs");
          std::vector<ObjectPtr> kv;
          for (const auto& pr : pairs.items) {
            if (pr->kind != Kind::Tuple || pr->items.size() != 2) err("OrderedDict item is not a (key, value) pair");
            kv.push_back(pr->items[0]);
            kv.push_back(pr->items[1]);
          }
          set_items(*d, kv);
        }
        return d;
      }
      if (m == "torch" && nm == "Size") {
        const Object& t = arg(args, 0, "torch.Size");
        if (t.kind != Kind::Tuple && t.kind != Kind::List) err("torch.Size argument is not a tuple");
        int_tuple(t, "torch.Size argument");
        auto o = make(Kind::Tuple);
        o->name = "torch.Size";
        std::vector<ObjectPtr> v = t.items;
        for (auto& x : v) adopt(*o, x);
        o->items = std::move(v);
        return o;
      }
      if (m == "_codecs" && nm == "encode" && args->items.size() == 2 && args->items[0]->kind == Kind::Str &&
          args->items[1]->kind == Kind::Str && (args->items[1]->s == "latin1" || args->items[1]->s == "latin-1")) {
        auto b = detail::utf8_to_latin1(args->items[0]->s);
        if (!b) err("_codecs.encode: text has characters outside latin-1");
        return make_str(std::move(*b), Kind::Bytes);
      }
      if (m == "builtins" && nm == "bytearray") {
        if (args->items.empty()) return make(Kind::Bytes);
        const Object& a0 = *args->items[0];
        if (a0.kind == Kind::Bytes) return make_str(a0.s, Kind::Bytes);
        if (a0.kind == Kind::Str && args->items.size() == 2) {
          auto b = detail::utf8_to_latin1(a0.s);
          if (!b) err("bytearray: text has characters outside latin-1");
          return make_str(std::move(*b), Kind::Bytes);
        }
      }
      if (m == "builtins" && (nm == "set" || nm == "frozenset")) {
        auto s = make(Kind::Set);
        if (!args->items.empty()) {
          const Object& src = *args->items[0];
          if (src.kind != Kind::List && src.kind != Kind::Tuple && src.kind != Kind::Set) err(nm, " of a non-sequence");
          std::vector<ObjectPtr> v = src.items;
          append_items(*s, v, Kind::Set);
        }
        return s;
      }
      if ((m == "types" && nm == "SimpleNamespace") || (m == "argparse" && nm == "Namespace")) {
        if (args->items.empty()) return make_namespace(fn);
      }
      if (m == "copyreg" && nm == "_reconstructor" && args->items.size() == 3 && args->items[0]->kind == Kind::Global &&
          args->items[1]->is_global("builtins", "object") && args->items[2]->is_none()) {
        return newobj(args->items[0], make(Kind::Tuple), nullptr);  // protocol 0/1 form of NEWOBJ
      }
    }
    return make_call(fn, args);
  }

  ObjectPtr make_call(const ObjectPtr& fn, const ObjectPtr& args) {
    auto o = make(Kind::Call);
    adopt(*o, fn);
    adopt(*o, args);
    o->callable = fn;
    o->args = args;
    return o;
  }
  ObjectPtr make_namespace(const ObjectPtr& cls) {
    auto o = make(Kind::Namespace);
    adopt(*o, cls);
    o->callable = cls;
    o->name = cls->qualified_name();
    return o;
  }

  ObjectPtr newobj(const ObjectPtr& cls, const ObjectPtr& args, const ObjectPtr& kwargs) {
    if (args->kind != Kind::Tuple) err("NEWOBJ arguments are a ", kind_name(args->kind), ", not a tuple");
    if (cls->kind == Kind::Global && !kwargs &&
        ((cls->s == "argparse" && cls->name == "Namespace") || (cls->s == "types" && cls->name == "SimpleNamespace")) &&
        args->items.empty())
      return make_namespace(cls);
    if (cls->kind == Kind::Global && cls->s == "collections" && cls->name == "OrderedDict" && args->items.empty() &&
        !kwargs) {
      auto d = make(Kind::Dict);
      d->name = "collections.OrderedDict";
      return d;
    }
    auto o = make(Kind::NewObj);
    adopt(*o, cls);
    o->callable = cls;
    if (kwargs) {
      auto both = make_tuple({args, kwargs});
      adopt(*o, both);
      o->args = both;
    } else {
      adopt(*o, args);
      o->args = args;
    }
    return o;
  }

  void build(Object& target, const ObjectPtr& st) {
    check_mutable(target);
    switch (target.kind) {
      case Kind::Namespace: {
        // state is the attribute dict (or (dict, slots) tuple)
        const Object* d = st.get();
        if (d->kind == Kind::Tuple && d->items.size() == 2 && d->items[0]->kind == Kind::Dict) d = d->items[0].get();
        if (d->kind != Kind::Dict) err("BUILD state of ", target.name, " is a ", kind_name(d->kind), ", not a dict");
        for (const auto& [k, v] : d->dict) {
          if (k->kind != Kind::Str) err("attribute name of ", target.name, " is not a string");
          adopt(target, k);
          adopt(target, v);
          target.dict.emplace_back(k, v);
        }
        return;
      }
      case Kind::Call: case Kind::NewObj: case Kind::Dict: case Kind::Tensor:
        if (target.state) err("second BUILD on the same ", kind_name(target.kind));
        adopt(target, st);
        target.state = st;
        return;
      default: err("BUILD on a ", kind_name(target.kind));
    }
  }

  ObjectPtr persistent(const ObjectPtr& pid) {
    const Object& t = *pid;
    if (t.kind != Kind::Tuple || t.items.size() != 5 || t.items[0]->kind != Kind::Str || t.items[0]->s != "storage")
      err("persistent id is not a ('storage', type, key, location, numel) tuple: ", describe(t));
    const Object& type = *t.items[1];
    const Object& key = *t.items[2];
    const Object& loc = *t.items[3];
    const Object& numel = *t.items[4];
    if (type.kind != Kind::Global) err("storage type is a ", kind_name(type.kind), ", not a class");
    if (key.kind != Kind::Str || loc.kind != Kind::Str || numel.kind != Kind::Int || numel.i < 0)
      err("malformed storage persistent id ", describe(t));
    if (type.s != "torch" && type.s != "torch.storage" && type.s != "torch.cuda")
      err("storage class ", type.qualified_name(), " is not a torch storage");
    auto it = storages_.find(key.s);
    if (it != storages_.end()) {
      const StorageRef& s = *it->second->storage;
      if (s.type_name != type.name || s.numel != numel.i)
        err("storage '", key.s, "' referenced as ", type.name, "[", numel.i, "] and earlier as ", s.type_name, "[",
            s.numel, "]");
      return it->second;
    }
    auto ref = std::make_shared<StorageRef>();
    ref->key = key.s;
    ref->type_name = type.name;
    ref->dtype = detail::storage_dtype(type.name, ref->element_size);
    if (ref->element_size == 0) err("unknown storage class ", type.qualified_name());
    ref->location = loc.s;
    ref->numel = numel.i;
    if (static_cast<std::uint64_t>(numel.i) > (std::uint64_t{1} << 62) / ref->element_size)
      err("storage '", key.s, "' size ", numel.i, " is absurd");
    auto o = make(Kind::Storage);
    o->storage = std::move(ref);
    if (storages_.size() >= kMaxMemo) err("too many storages");
    storages_.emplace(key.s, o);
    return o;
  }

  ObjectPtr clone_tensor(const Object& t) {
    auto o = make(Kind::Tensor);
    o->tensor = std::make_shared<TensorRef>(*t.tensor);
    o->depth = t.depth;
    o->weight = t.weight;
    return o;
  }
  void attach_attributes(Object& t, const ObjectPtr& attrs) {
    if (!attrs || attrs->is_none()) return;
    if (attrs->kind == Kind::Dict && attrs->dict.empty()) return;
    adopt(t, attrs);
    t.tensor->attributes = attrs;
  }

  ObjectPtr rebuild_tensor(const std::string& fn, const ObjectPtr& args) {
    const char* f = fn.c_str();
    const Object& st = arg(args, 0, f);
    if (st.kind != Kind::Storage) err(fn, ": first argument is a ", kind_name(st.kind), ", not a storage");
    auto tr = std::make_shared<TensorRef>();
    tr->storage = *st.storage;
    const Object& off = arg(args, 1, f);
    if (off.kind != Kind::Int || off.i < 0) err(fn, ": storage offset must be a non-negative int");
    tr->storage_offset = off.i;
    tr->shape = int_tuple(arg(args, 2, f), "tensor size");
    tr->strides = int_tuple(arg(args, 3, f), "tensor stride");
    if (tr->shape.size() != tr->strides.size())
      err(fn, ": size ", shape_str(tr->shape), " and stride ", shape_str(tr->strides), " differ in rank");
    if (fn != "_rebuild_tensor" && args->items.size() > 4 && args->items[4]->kind == Kind::Bool)
      tr->requires_grad = args->items[4]->b;
    std::size_t elsize = st.storage->element_size;
    if (fn == "_rebuild_tensor_v3") {
      const Object& dt = arg(args, 6, f);
      if (dt.kind != Kind::Global || dt.s != "torch") err(fn, ": dtype argument is not a torch dtype");
      tr->dtype_name = dt.name;
      tr->dtype = dtype_from_torch_dtype(dt.name);
      elsize = tr->dtype ? dtype_size(*tr->dtype) : detail::torch_dtype_size(dt.name);
      if (elsize == 0) err(fn, ": unknown dtype torch.", dt.name);
      if (st.storage->nbytes() % elsize != 0)
        err(fn, ": storage '", st.storage->key, "' of ", st.storage->nbytes(), " bytes is not a whole number of ",
            dt.name, " elements");
    } else {
      tr->dtype = st.storage->dtype;
      tr->dtype_name = tr->dtype ? std::string(torch_dtype_name(*tr->dtype)) : st.storage->type_name;
    }
    // Bounds: the highest element the view touches must lie inside the storage.
    const std::uint64_t cap = st.storage->nbytes() / elsize;
    bool empty = false;
    for (std::size_t d = 0; d < tr->shape.size(); ++d) {
      if (tr->shape[d] < 0 || tr->strides[d] < 0)
        err(fn, ": negative size or stride in ", shape_str(tr->shape), " / ", shape_str(tr->strides));
      if (tr->shape[d] == 0) empty = true;
    }
    if (!empty) {
      unsigned __int128 last = static_cast<std::uint64_t>(tr->storage_offset);
      for (std::size_t d = 0; d < tr->shape.size(); ++d) {
        last += static_cast<unsigned __int128>(tr->shape[d] - 1) * static_cast<std::uint64_t>(tr->strides[d]);
        if (last >= (static_cast<unsigned __int128>(1) << 64)) break;
      }
      if (last >= cap)
        err(fn, ": tensor of size ", shape_str(tr->shape), ", stride ", shape_str(tr->strides), ", offset ",
            tr->storage_offset, " reaches past storage '", st.storage->key, "' (", cap, " elements)");
    } else if (static_cast<std::uint64_t>(tr->storage_offset) > cap) {
      err(fn, ": storage offset ", tr->storage_offset, " is past storage '", st.storage->key, "'");
    }
    auto o = make(Kind::Tensor);
    o->tensor = std::move(tr);
    ++tensors_seen_;
    return o;
  }

  static constexpr std::size_t kMaxStack = 1u << 20;
  static constexpr std::size_t kMaxMemo = 1u << 24;
  const std::uint8_t* p_;
  std::size_t n_;
  std::size_t pos_ = 0, op_off_ = 0;
  std::string source_;
  Limits limits_;
  std::vector<ObjectPtr> stack_;
  std::vector<std::size_t> marks_;
  std::vector<ObjectPtr> dense_memo_;
  std::map<std::uint64_t, ObjectPtr> sparse_memo_;
  std::map<std::string, ObjectPtr> storages_;
  std::size_t tensors_seen_ = 0;
};

// Parses a whole pickle stream.
inline ObjectPtr loads(std::span<const std::byte> data, std::string source, Limits limits = {}) {
  return Unpickler(data, std::move(source), limits).load();
}

// ---- out-of-line members

inline std::string_view kind_name(Kind k) {
  switch (k) {
    case Kind::None: return "None"; case Kind::Bool: return "bool"; case Kind::Int: return "int";
    case Kind::BigInt: return "big int"; case Kind::Float: return "float"; case Kind::Str: return "str";
    case Kind::Bytes: return "bytes"; case Kind::List: return "list"; case Kind::Tuple: return "tuple";
    case Kind::Dict: return "dict"; case Kind::Set: return "set"; case Kind::Global: return "global";
    case Kind::Call: return "call"; case Kind::NewObj: return "object"; case Kind::Namespace: return "namespace";
    case Kind::Storage: return "storage"; case Kind::Tensor: return "tensor";
  }
  return "?";
}

inline std::int64_t Object::as_int(std::string_view what) const {
  if (kind != Kind::Int) fail(what, " is a ", kind_name(kind), ", expected an int");
  return i;
}
inline double Object::as_float(std::string_view what) const {
  if (kind == Kind::Int) return static_cast<double>(i);
  if (kind != Kind::Float) fail(what, " is a ", kind_name(kind), ", expected a float");
  return f;
}
inline bool Object::as_bool(std::string_view what) const {
  if (kind != Kind::Bool) fail(what, " is a ", kind_name(kind), ", expected a bool");
  return b;
}
inline const std::string& Object::as_str(std::string_view what) const {
  if (kind != Kind::Str) fail(what, " is a ", kind_name(kind), ", expected a str");
  return s;
}
inline ObjectPtr Object::get(std::string_view key) const {
  if (kind != Kind::Dict && kind != Kind::Namespace) return nullptr;
  for (const auto& [k, v] : dict)
    if (k->kind == Kind::Str && k->s == key) return v;
  return nullptr;
}

namespace detail {
inline void describe_into(const Object& o, std::string& out, std::size_t max) {
  if (out.size() > max) return;
  switch (o.kind) {
    case Kind::None: out += "None"; return;
    case Kind::Bool: out += o.b ? "True" : "False"; return;
    case Kind::Int: out += std::to_string(o.i); return;
    case Kind::BigInt: out += o.s; return;
    case Kind::Float: out += std::to_string(o.f); return;
    case Kind::Str: out += "'" + o.s.substr(0, 64) + "'"; return;
    case Kind::Bytes: out += "b<" + std::to_string(o.s.size()) + " bytes>"; return;
    case Kind::Global: out += o.qualified_name(); return;
    case Kind::Storage: out += "storage<" + o.storage->type_name + " '" + o.storage->key + "'>"; return;
    case Kind::Tensor: out += "tensor<" + o.tensor->dtype_name + shape_str(o.tensor->shape) + ">"; return;
    case Kind::List: case Kind::Tuple: case Kind::Set: {
      out += o.kind == Kind::List ? "[" : o.kind == Kind::Set ? "{" : "(";
      for (std::size_t k = 0; k < o.items.size() && out.size() <= max; ++k) {
        if (k) out += ", ";
        describe_into(*o.items[k], out, max);
      }
      out += o.kind == Kind::List ? "]" : o.kind == Kind::Set ? "}" : ")";
      return;
    }
    case Kind::Dict: case Kind::Namespace: {
      out += o.kind == Kind::Namespace ? o.name + "(" : "{";
      for (std::size_t k = 0; k < o.dict.size() && out.size() <= max; ++k) {
        if (k) out += ", ";
        describe_into(*o.dict[k].first, out, max);
        out += ": ";
        describe_into(*o.dict[k].second, out, max);
      }
      out += o.kind == Kind::Namespace ? ")" : "}";
      return;
    }
    case Kind::Call: case Kind::NewObj:
      describe_into(*o.callable, out, max);
      out += o.kind == Kind::NewObj ? ".__new__" : "";
      describe_into(*o.args, out, max);
      return;
  }
}
}  // namespace detail

inline std::string describe(const Object& o, std::size_t max_chars) {
  std::string s;
  detail::describe_into(o, s, max_chars);
  if (s.size() > max_chars) s = s.substr(0, max_chars) + "...";
  return s;
}

}  // namespace ckbridge::pickle
