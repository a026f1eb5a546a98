#pragma once
// Python object trees for the write side, and a pickle protocol-2 emitter that produces the
// bytes CPython's C pickler (as called by torch.save) produces for the same objects.
//
// `pickle::Value` is a cheap handle (shared node). Copying a Value shares the node, and the
// emitter memoizes by node identity exactly like Python memoizes by `id(obj)`: the second
// occurrence of the same node becomes a BINGET. GLOBALs are memoized by (module, name), the way
// one class object is one memo entry. So "the same object twice" (a tied weight, TE's DType enum
// used by a tensor and its quantizer) is expressed by reusing a Value; equal-but-distinct objects
// are built separately.
//
// Only protocol-2 opcodes are emitted: torch's weights_only unpickler rejects newer ones.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ckbridge/core/any_view.hpp"
#include "ckbridge/core/dtype.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/core/shape.hpp"
#include "ckbridge/core/tensor.hpp"

namespace ckbridge::pickle {

// One torch storage = one `data/<key>` record. Its bytes are the elements of `source` in
// row-major order (the source may be strided; it is packed while streaming). `owner` keeps the
// source memory alive (an mmap, a Tensor) for as long as the object tree exists.
struct Storage {
  AnyConstView source;
  std::shared_ptr<const void> owner;
  bool zeros = false;  // all-zero contents, no memory behind `source` (written sparse to files)
  // Lazy storage: the bytes are made when the record is written (a converter's producer fills
  // `scratch` or returns a view of source memory); `source` then only declares dtype and size.
  std::function<AnyConstView(Tensor& scratch)> produce;

  DType dtype() const { return source.dtype; }
  std::int64_t numel() const { return source.numel(); }
  std::uint64_t nbytes() const { return source.size_bytes(); }
};

// True when torch pickles this dtype with `_rebuild_tensor_v3` + `torch.storage.UntypedStorage`
// (no legacy typed storage class exists for it).
constexpr bool needs_untyped_storage(DType d) { return is_fp8(d); }

class Value;

namespace writer_detail {
enum class Kind : std::uint8_t { None, Bool, Int, Float, Str, Bytes, List, Tuple, Dict, Global, Object, Tensor };
struct Node;
}  // namespace writer_detail

class Value {
public:
  using Kind = writer_detail::Kind;
  using Item = std::pair<Value, Value>;

  Value() = default;  // None
  Value(std::nullptr_t) {}
  Value(bool b);
  template <class I>
    requires(std::is_integral_v<I> && !std::is_same_v<I, bool>)
  Value(I i) : Value(from_int(static_cast<std::int64_t>(i))) {
    if constexpr (std::is_unsigned_v<I> && sizeof(I) >= 8)
      if (i > static_cast<std::uint64_t>(INT64_MAX)) fail("pickle: integer ", i, " does not fit in int64");
  }
  Value(double d);
  Value(const char* s) : Value(std::string(s)) {}
  Value(std::string_view s) : Value(std::string(s)) {}
  Value(std::string s);

  // ---- constructors by kind
  static Value none() { return Value(); }
  static Value bytes(std::string raw);                       // Python bytes
  static Value list(std::vector<Value> items = {});
  static Value tuple(std::vector<Value> items = {});
  static Value dict(std::vector<Item> items = {});           // plain dict
  static Value global(std::string module, std::string name); // class / function reference
  // callable(*args) [then BUILD state]; dict_items are SETITEM'd into the result (OrderedDict).
  static Value reduce(Value callable, Value args, std::optional<Value> state = std::nullopt,
                      std::vector<Item> dict_items = {});
  // cls.__new__(cls, *args) [then BUILD state] (argparse.Namespace, TE quantizer, pybind enums).
  static Value newobj(Value cls, Value args, std::optional<Value> state = std::nullopt);
  static Value ordered_dict(std::vector<Item> items = {}, std::optional<Value> state = std::nullopt);
  static Value namespace_(std::vector<std::pair<std::string, Value>> attrs);  // argparse.Namespace
  static Value torch_size(const Shape& s);
  static Value dtype(DType d);  // GLOBAL torch.<dtype>

  // Tensors. A tensor is a view (offset, shape, strides in elements) of a storage; several
  // tensors may share one storage (one record, one key).
  static std::shared_ptr<const Storage> make_storage(AnyConstView source, std::shared_ptr<const void> owner = {});
  // All-zero storage without memory (padding, tests of huge records).
  static std::shared_ptr<const Storage> zero_storage(DType dtype, std::int64_t numel);
  static Value tensor(std::shared_ptr<const Storage> storage, std::int64_t offset, Shape shape, Shape strides);
  // A contiguous tensor whose storage is exactly `v`'s elements (v itself may be strided).
  static Value tensor(AnyConstView v, std::shared_ptr<const void> owner = {});
  static Value tensor(Tensor t);  // takes ownership
  // A contiguous tensor whose storage bytes `produce` makes at write time (bounded memory: only
  // one storage's bytes exist at once). The view it returns must hold numel(shape) elements of
  // `dtype`'s size.
  static Value lazy_tensor(DType dtype, Shape shape, std::function<AnyConstView(Tensor& scratch)> produce);

  // ---- mutation while building (dicts, OrderedDicts, lists); not allowed once shared into a
  // finished tree that is being written.
  Value& set(Value key, Value v);  // dict / OrderedDict items: appends; duplicate str keys throw
  Value& append(Value v);          // list

  Kind kind() const;
  bool is_none() const { return kind() == Kind::None; }
  const writer_detail::Node* node() const { return n_.get(); }

private:
  static Value from_int(std::int64_t i);
  explicit Value(std::shared_ptr<writer_detail::Node> n) : n_(std::move(n)) {}
  std::shared_ptr<writer_detail::Node> n_;
  friend class Emitter;
};

namespace writer_detail {
struct Node {
  Kind kind = Kind::None;
  bool b = false;
  std::int64_t i = 0;
  double f = 0;
  std::string s, s2;                // str / bytes payload; global module + name
  bool fresh_str = false;           // a str CPython would never share (str(int) results)
  std::vector<Value> items;         // list / tuple
  std::vector<Value::Item> kv;      // dict items, or an object's SETITEMS
  std::unordered_map<std::string, std::size_t> str_keys;  // duplicate detection
  // Object
  Value callable, args;
  bool is_newobj = false;
  std::optional<Value> state;
  // Tensor
  std::shared_ptr<const Storage> storage;
  std::int64_t offset = 0;
  Shape shape, strides;
};

inline bool valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const std::size_t n = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : 4;
    if (n == 4 || i + n >= s.size() + (n == 0)) return false;
    for (std::size_t k = 1; k <= n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    i += n + 1;
  }
  return true;
}
}  // namespace writer_detail

// ------------------------------------------------------------------ Value implementation
inline Value::Value(bool b) : n_(std::make_shared<writer_detail::Node>()) {
  n_->kind = Kind::Bool;
  n_->b = b;
}
inline Value Value::from_int(std::int64_t i) {
  auto n = std::make_shared<writer_detail::Node>();
  n->kind = Kind::Int;
  n->i = i;
  return Value(std::move(n));
}
inline Value::Value(double d) : n_(std::make_shared<writer_detail::Node>()) {
  n_->kind = Kind::Float;
  n_->f = d;
}
inline Value::Value(std::string s) : n_(std::make_shared<writer_detail::Node>()) {
  if (!writer_detail::valid_utf8(s)) fail("pickle: string is not valid UTF-8: '", s, "'");
  n_->kind = Kind::Str;
  n_->s = std::move(s);
}
inline Value Value::bytes(std::string raw) {
  auto n = std::make_shared<writer_detail::Node>();
  n->kind = Kind::Bytes;
  n->s = std::move(raw);
  return Value(std::move(n));
}
inline Value Value::list(std::vector<Value> items) {
  auto n = std::make_shared<writer_detail::Node>();
  n->kind = Kind::List;
  n->items = std::move(items);
  return Value(std::move(n));
}
inline Value Value::tuple(std::vector<Value> items) {
  auto n = std::make_shared<writer_detail::Node>();
  n->kind = Kind::Tuple;
  n->items = std::move(items);
  return Value(std::move(n));
}
inline Value Value::dict(std::vector<Item> items) {
  Value v(std::make_shared<writer_detail::Node>());
  v.n_->kind = Kind::Dict;
  for (auto& [k, x] : items) v.set(std::move(k), std::move(x));
  return v;
}
inline Value Value::global(std::string module, std::string name) {
  if (module.empty() || name.empty() || module.find('\n') != std::string::npos ||
      name.find('\n') != std::string::npos)
    fail("pickle: invalid GLOBAL '", module, "' '", name, "'");
  auto n = std::make_shared<writer_detail::Node>();
  n->kind = Kind::Global;
  n->s = std::move(module);
  n->s2 = std::move(name);
  return Value(std::move(n));
}
inline Value Value::reduce(Value callable, Value args, std::optional<Value> state, std::vector<Item> dict_items) {
  if (args.kind() != Kind::Tuple) fail("pickle: REDUCE arguments must be a tuple");
  Value v(std::make_shared<writer_detail::Node>());
  v.n_->kind = Kind::Object;
  v.n_->callable = std::move(callable);
  v.n_->args = std::move(args);
  v.n_->state = std::move(state);
  for (auto& [k, x] : dict_items) v.set(std::move(k), std::move(x));
  return v;
}
inline Value Value::newobj(Value cls, Value args, std::optional<Value> state) {
  if (cls.kind() != Kind::Global) fail("pickle: NEWOBJ class must be a GLOBAL");
  Value v = reduce(std::move(cls), std::move(args), std::move(state));
  v.n_->is_newobj = true;
  return v;
}
inline Value Value::ordered_dict(std::vector<Item> items, std::optional<Value> state) {
  return reduce(global("collections", "OrderedDict"), tuple(), std::move(state), std::move(items));
}
inline Value Value::namespace_(std::vector<std::pair<std::string, Value>> attrs) {
  Value d = dict();
  for (auto& [k, x] : attrs) d.set(Value(std::move(k)), std::move(x));
  return newobj(global("argparse", "Namespace"), tuple(), d);
}
inline Value Value::torch_size(const Shape& s) {
  std::vector<Value> dims;
  for (auto e : s) dims.emplace_back(e);
  return reduce(global("torch", "Size"), tuple({tuple(std::move(dims))}));
}
inline Value Value::dtype(DType d) { return global("torch", std::string(torch_dtype_name(d))); }

inline std::shared_ptr<const Storage> Value::make_storage(AnyConstView source, std::shared_ptr<const void> owner) {
  for (auto e : source.shape)
    if (e < 0) fail("pickle: negative extent in storage shape ", shape_str(source.shape));
  if (!source.data && source.numel() > 0) fail("pickle: storage of shape ", shape_str(source.shape), " has no data");
  auto st = std::make_shared<Storage>();
  st->source = std::move(source);
  st->owner = std::move(owner);
  return st;
}
inline Value Value::lazy_tensor(DType dtype, Shape shape, std::function<AnyConstView(Tensor& scratch)> produce) {
  if (!produce) fail("pickle: lazy tensor of shape ", shape_str(shape), " without a producer");
  for (auto e : shape)
    if (e < 0) fail("pickle: negative extent in tensor shape ", shape_str(shape));
  auto st = std::make_shared<Storage>();
  st->source = AnyConstView(nullptr, dtype, Shape{ckbridge::numel(shape)});
  st->produce = std::move(produce);
  Shape strides = contiguous_strides(shape);
  return tensor(std::move(st), 0, std::move(shape), std::move(strides));
}
inline std::shared_ptr<const Storage> Value::zero_storage(DType dtype, std::int64_t numel) {
  if (numel < 0) fail("pickle: negative zero-storage size ", numel);
  auto st = std::make_shared<Storage>();
  st->source = AnyConstView(nullptr, dtype, Shape{numel});
  st->zeros = true;
  return st;
}
inline Value Value::tensor(std::shared_ptr<const Storage> storage, std::int64_t offset, Shape shape, Shape strides) {
  if (!storage) fail("pickle: tensor without storage");
  if (shape.size() != strides.size())
    fail("pickle: tensor shape ", shape_str(shape), " and strides ", shape_str(strides), " differ in rank");
  // The loader slices the storage blindly: every element the view reaches must be inside it.
  std::int64_t hi = offset, lo = offset;
  bool empty = false;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] < 0) fail("pickle: negative extent in tensor shape ", shape_str(shape));
    if (shape[d] == 0) empty = true;
    else if (strides[d] >= 0) hi += (shape[d] - 1) * strides[d];
    else lo += (shape[d] - 1) * strides[d];
  }
  if (offset < 0 || (!empty && (lo < 0 || hi >= storage->numel())))
    fail("pickle: tensor view (offset ", offset, ", shape ", shape_str(shape), ", strides ", shape_str(strides),
         ") exceeds its storage of ", storage->numel(), " elements");
  Value v(std::make_shared<writer_detail::Node>());
  v.n_->kind = Kind::Tensor;
  v.n_->storage = std::move(storage);
  v.n_->offset = offset;
  v.n_->shape = std::move(shape);
  v.n_->strides = std::move(strides);
  return v;
}
inline Value Value::tensor(AnyConstView v, std::shared_ptr<const void> owner) {
  Shape shape = v.shape;
  Shape strides = contiguous_strides(shape);
  return tensor(make_storage(std::move(v), std::move(owner)), 0, std::move(shape), std::move(strides));
}
inline Value Value::tensor(Tensor t) {
  auto owner = std::make_shared<Tensor>(std::move(t));
  AnyConstView v = std::as_const(*owner).view();
  return tensor(v, std::shared_ptr<const void>(owner, owner.get()));
}

inline Value& Value::set(Value key, Value v) {
  if (!n_ || (n_->kind != Kind::Dict && n_->kind != Kind::Object) || n_->is_newobj)
    fail("pickle: set() on a value that is not a dict or OrderedDict");
  if (key.kind() == Kind::Str) {
    auto [it, fresh] = n_->str_keys.emplace(key.n_->s, n_->kv.size());
    if (!fresh) fail("pickle: duplicate dict key '", key.n_->s, "'");
  }
  n_->kv.emplace_back(std::move(key), std::move(v));
  return *this;
}
inline Value& Value::append(Value v) {
  if (!n_ || n_->kind != Kind::List) fail("pickle: append() on a value that is not a list");
  n_->items.push_back(std::move(v));
  return *this;
}
inline Value::Kind Value::kind() const { return n_ ? n_->kind : Kind::None; }

// ------------------------------------------------------------------ emitter
struct PickleOptions {
  bool memo = true;  // BINPUT/BINGET like CPython; false = no memo (identity sharing is lost)
  std::size_t max_depth = 1000;
};

// The result of pickling: data.pkl bytes and the storages in key order ("0", "1", ...).
struct Pickled {
  std::vector<std::uint8_t> bytes;
  std::vector<std::shared_ptr<const Storage>> storages;
};

class Emitter {
public:
  explicit Emitter(PickleOptions opt = {}) : opt_(opt) {}

  Pickled run(const Value& root) {
    out_.clear();
    op(0x80);
    op(2);
    save(root, 0);
    op('.');
    Pickled p;
    p.bytes = std::move(out_);
    p.storages = std::move(storages_);
    return p;
  }

private:
  using Kind = writer_detail::Kind;
  using Node = writer_detail::Node;

  void op(std::uint8_t c) { out_.push_back(c); }
  void u32(std::uint32_t v) { for (int i = 0; i < 4; ++i) out_.push_back(std::uint8_t(v >> (8 * i))); }
  void raw(std::string_view s) { out_.insert(out_.end(), s.begin(), s.end()); }

  void put(std::uint32_t idx) {
    if (idx < 256) { op('q'); op(std::uint8_t(idx)); }
    else { op('r'); u32(idx); }
  }
  void get(std::uint32_t idx) {
    if (idx < 256) { op('h'); op(std::uint8_t(idx)); }
    else { op('j'); u32(idx); }
  }
  // Memoize the object just emitted (keyed by node identity or a synthetic key).
  void memoize(const void* id) {
    if (!opt_.memo) return;
    const auto idx = static_cast<std::uint32_t>(memo_count_++);
    memo_.emplace(id, idx);
    put(idx);
  }
  // An object that can never be seen again (created by the reduction itself): only takes an index.
  void memoize_fresh() {
    if (opt_.memo) put(static_cast<std::uint32_t>(memo_count_++));
  }
  void memoize_key(const std::string& key) {
    if (!opt_.memo) return;
    const auto idx = static_cast<std::uint32_t>(memo_count_++);
    gmemo_.emplace(key, idx);
    put(idx);
  }
  bool try_get(const void* id) {
    if (!opt_.memo) return false;
    auto it = memo_.find(id);
    if (it == memo_.end()) return false;
    get(it->second);
    return true;
  }

  void save_int(std::int64_t v) {
    if (v >= 0 && v < 256) { op('K'); op(std::uint8_t(v)); }
    else if (v >= 0 && v < 65536) { op('M'); op(std::uint8_t(v)); op(std::uint8_t(v >> 8)); }
    else if (v >= INT32_MIN && v <= INT32_MAX) { op('J'); u32(static_cast<std::uint32_t>(v)); }
    else {
      // LONG1: minimal two's-complement little-endian
      std::uint8_t b[8];
      for (int i = 0; i < 8; ++i) b[i] = std::uint8_t(static_cast<std::uint64_t>(v) >> (8 * i));
      int n = 8;
      while (n > 1 && ((b[n - 1] == 0 && b[n - 2] < 0x80) || (b[n - 1] == 0xFF && b[n - 2] >= 0x80))) --n;
      op(0x8A); op(std::uint8_t(n));
      for (int i = 0; i < n; ++i) op(b[i]);
    }
  }
  void save_float(double d) {
    std::uint64_t bits;
    std::memcpy(&bits, &d, 8);
    op('G');
    for (int i = 7; i >= 0; --i) op(std::uint8_t(bits >> (8 * i)));
  }
  void emit_str_bytes(std::string_view s) {
    if (s.size() > 0xFFFFFFFFu) fail("pickle: string of ", s.size(), " bytes is too long for protocol 2");
    op('X');
    u32(static_cast<std::uint32_t>(s.size()));
    raw(s);
  }
  // A str object Python would intern / keep as one constant ('storage', 'cpu', 'latin1').
  void save_const_str(const std::string& s) {
    const std::string key = "\x01str\n" + s;
    if (opt_.memo) {
      auto it = gmemo_.find(key);
      if (it != gmemo_.end()) { get(it->second); return; }
    }
    emit_str_bytes(s);
    memoize_key(key);
  }
  void save_global(const std::string& module, const std::string& name) {
    // Protocol 2 writes Python 3's `builtins` under its Python 2 name (pickle fix_imports).
    const std::string& mod = module == "builtins" ? kBuiltin : module;
    const std::string key = "\x02glb\n" + mod + "\n" + name;
    if (opt_.memo) {
      auto it = gmemo_.find(key);
      if (it != gmemo_.end()) { get(it->second); return; }
    }
    op('c');
    raw(mod); op('\n'); raw(name); op('\n');
    memoize_key(key);
  }

  // CPython's batch_setitems: one item -> SETITEM, else MARK..SETITEMS in batches of 1000. An
  // exact dict ends with an empty MARK SETITEMS when its size is a multiple of 1000
  // (batch_dict_exact); an item iterator (OrderedDict) never does (batch_dict).
  void save_items(const std::vector<Value::Item>& kv, bool exact_dict, std::size_t depth) {
    const std::size_t n = kv.size();
    if (n == 0) return;
    if (exact_dict) {
      if (n == 1) {
        save(kv[0].first, depth); save(kv[0].second, depth); op('s');
        return;
      }
      std::size_t i = 0, batch;
      do {
        op('(');
        batch = 0;
        while (i < n) {
          save(kv[i].first, depth); save(kv[i].second, depth);
          ++i;
          if (++batch == 1000) break;
        }
        op('u');
      } while (batch == 1000);
      return;
    }
    std::size_t i = 0;
    while (i < n) {
      const std::size_t left = n - i;
      if (left == 1) {
        save(kv[i].first, depth); save(kv[i].second, depth); op('s');
        return;
      }
      op('(');
      const std::size_t take = std::min<std::size_t>(left, 1000);
      for (std::size_t k = 0; k < take; ++k, ++i) { save(kv[i].first, depth); save(kv[i].second, depth); }
      op('u');
    }
  }

  void save(const Value& v, std::size_t depth) {
    if (depth > opt_.max_depth) fail("pickle: object tree deeper than ", opt_.max_depth, " levels (cycle?)");
    const Node* n = v.node();
    if (!n) { op('N'); return; }
    switch (n->kind) {
      case Kind::None: op('N'); return;
      case Kind::Bool: op(n->b ? 0x88 : 0x89); return;
      case Kind::Int: save_int(n->i); return;
      case Kind::Float: save_float(n->f); return;
      case Kind::Global: save_global(n->s, n->s2); return;
      default: break;
    }
    if (try_get(n)) return;
    switch (n->kind) {
      case Kind::Str:
        // CPython keeps '' and 1-character ASCII strs as singletons: equal ones are one object.
        if (!n->fresh_str && (n->s.empty() || (n->s.size() == 1 && static_cast<unsigned char>(n->s[0]) < 0x80))) {
          save_const_str(n->s);
          return;
        }
        emit_str_bytes(n->s);
        memoize(n);
        return;
      case Kind::Bytes:
        if (n->s.empty()) {
          save_global("builtins", "bytes");
          op(')');
        } else {
          // protocol 2 has no bytes opcode: _codecs.encode(<latin-1 text>, 'latin1')
          save_global("_codecs", "encode");
          std::string text;
          for (unsigned char c : n->s) {
            if (c < 0x80) text.push_back(char(c));
            else { text.push_back(char(0xC0 | (c >> 6))); text.push_back(char(0x80 | (c & 0x3F))); }
          }
          emit_str_bytes(text);
          memoize_fresh();  // the latin-1 str
          save_const_str("latin1");
          op(0x86);
          memoize_fresh();  // the args tuple
        }
        op('R');
        memoize(n);
        return;
      case Kind::Tuple: {
        const auto& it = n->items;
        if (it.empty()) { op(')'); return; }
        if (it.size() <= 3) {
          for (const auto& x : it) save(x, depth + 1);
          if (try_get(n)) return;  // only reachable through a cycle; CPython then POPs
          op(static_cast<std::uint8_t>(0x84 + it.size()));
        } else {
          op('(');
          for (const auto& x : it) save(x, depth + 1);
          op('t');
        }
        memoize(n);
        return;
      }
      case Kind::List: {
        op(']');
        memoize(n);
        const auto& it = n->items;
        if (it.size() == 1) {
          save(it[0], depth + 1);
          op('a');
        } else if (!it.empty()) {
          std::size_t i = 0;
          do {
            op('(');
            for (std::size_t k = 0; k < 1000 && i < it.size(); ++k, ++i) save(it[i], depth + 1);
            op('e');
          } while (i < it.size());
        }
        return;
      }
      case Kind::Dict:
        op('}');
        memoize(n);
        save_items(n->kv, true, depth + 1);
        return;
      case Kind::Object:
        save(n->callable, depth + 1);
        save(n->args, depth + 1);
        op(n->is_newobj ? 0x81 : 'R');
        memoize(n);
        save_items(n->kv, false, depth + 1);
        if (n->state) {
          save(*n->state, depth + 1);
          op('b');
        }
        return;
      case Kind::Tensor:
        save_tensor(*n, depth);
        memoize(n);
        return;
      default: fail("pickle: corrupt value node");
    }
  }

  void save_tensor(const Node& n, std::size_t depth) {
    const Storage& st = *n.storage;
    const DType dt = st.dtype();
    const bool v3 = needs_untyped_storage(dt);
    save_global("torch._utils", v3 ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2");
    op('(');
    // persistent id ('storage', storage_type, key, location, numel)
    auto [it, fresh] = keys_.try_emplace(&st, Value());
    if (fresh) {
      it->second = Value(std::to_string(storages_.size()));
      it->second.n_->fresh_str = true;  // torch: str(len(id_map)), a new object per storage
      storages_.push_back(n.storage);
    }
    op('(');
    save_const_str("storage");
    if (v3) save_global("torch.storage", "UntypedStorage");
    else save_global("torch", std::string(torch_storage_name(dt)));
    save(it->second, depth + 1);  // the same str object for every view of this storage
    save_const_str("cpu");
    save_int(v3 ? static_cast<std::int64_t>(st.nbytes()) : st.numel());
    op('t');
    memoize_fresh();  // the pid tuple (a new tuple per tensor in torch)
    op('Q');
    save_int(n.offset);
    save_dims(n.shape);
    save_dims(n.strides);
    op(0x89);  // requires_grad False
    save_global("collections", "OrderedDict");
    op(')');
    op('R');
    memoize_fresh();  // backward_hooks = OrderedDict()
    if (v3) save_global("torch", std::string(torch_dtype_name(dt)));
    op('t');
    memoize_fresh();  // the args tuple
    op('R');
  }
  void save_dims(const Shape& s) {
    if (s.empty()) { op(')'); return; }
    if (s.size() <= 3) {
      for (auto e : s) save_int(e);
      op(static_cast<std::uint8_t>(0x84 + s.size()));
    } else {
      op('(');
      for (auto e : s) save_int(e);
      op('t');
    }
    memoize_fresh();
  }

  inline static const std::string kBuiltin = "__builtin__";
  PickleOptions opt_;
  std::vector<std::uint8_t> out_;
  std::unordered_map<const void*, std::uint32_t> memo_;
  std::unordered_map<std::string, std::uint32_t> gmemo_;
  std::size_t memo_count_ = 0;
  std::unordered_map<const Storage*, Value> keys_;
  std::vector<std::shared_ptr<const Storage>> storages_;
};

inline Pickled dumps(const Value& root, PickleOptions opt = {}) { return Emitter(opt).run(root); }

}  // namespace ckbridge::pickle
