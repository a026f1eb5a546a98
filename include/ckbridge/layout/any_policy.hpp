#pragma once
// AnyPolicy: a layout policy with its type erased, so that a run-time table of parameter kinds
// (model::ModelSpec) can hold each kind's layout. It is itself a Policy; the composed types
// (Then<VocabPad, SplitDim>, GroupedQkv, ...) stay concrete inside it.
#include <concepts>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "ckbridge/layout/policy.hpp"

namespace ckbridge::layout {

class AnyPolicy {
public:
  AnyPolicy() = default;
  // (the self test comes first: Policy<AnyPolicy> asks whether AnyPolicy is copy constructible,
  // which must not recurse into this constructor)
  template <class P>
    requires(!std::same_as<std::remove_cvref_t<P>, AnyPolicy> && Policy<P>)
  AnyPolicy(P p) : impl_(std::make_shared<Model<P>>(std::move(p))) {}

  explicit operator bool() const { return impl_ != nullptr; }

  std::optional<std::string> why_not(std::string_view tensor, const Shape& full, int size) const {
    return get().why_not(tensor, full, size);
  }
  ShardMap shard_map(std::string_view tensor, const Shape& full, int rank, int size) const {
    return get().shard_map(tensor, full, rank, size);
  }
  Shape full_shape(const Shape& shard, int size) const { return get().full_shape(shard, size); }

private:
  struct Concept {
    virtual ~Concept() = default;
    virtual std::optional<std::string> why_not(std::string_view, const Shape&, int) const = 0;
    virtual ShardMap shard_map(std::string_view, const Shape&, int, int) const = 0;
    virtual Shape full_shape(const Shape&, int) const = 0;
  };
  template <class P>
  struct Model final : Concept {
    explicit Model(P q) : p(std::move(q)) {}
    std::optional<std::string> why_not(std::string_view t, const Shape& f, int n) const override {
      return p.why_not(t, f, n);
    }
    ShardMap shard_map(std::string_view t, const Shape& f, int r, int n) const override {
      return p.shard_map(t, f, r, n);
    }
    Shape full_shape(const Shape& s, int n) const override { return p.full_shape(s, n); }
    P p;
  };
  const Concept& get() const {
    if (!impl_) fail("layout: empty AnyPolicy");
    return *impl_;
  }
  std::shared_ptr<const Concept> impl_;
};

static_assert(Policy<AnyPolicy>);

}  // namespace ckbridge::layout
