// torch_dist (Megatron-Core distributed checkpoint) reader and writer against checkpoints that real
// Megatron-Core 0.16.1 + torch 2.15 saved (tests/data/torch_dist/, made by
// tests/tools/make_torch_dist_fixtures.py). The expected tensors come from <name>.ref.safetensors,
// which torch + the safetensors library wrote from the same tensors before the save.
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <cstring>
#include <memory>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "ckbridge/format/safetensors_file.hpp"
#include "ckbridge/format/torch_dist.hpp"
#include "ckbridge/format/torch_dist_reader.hpp"
#include "ckbridge/format/torch_dist_writer.hpp"

using namespace ckbridge;
namespace fs = std::filesystem;
namespace td = ckbridge::format::torch_dist;
namespace pk = ckbridge::pickle;

namespace {

const fs::path kData = fs::path(CKB_TEST_DATA_DIR) / "torch_dist";

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  BOOST_REQUIRE_MESSAGE(f, "cannot read " << p);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

struct TmpDir {
  fs::path p;
  explicit TmpDir(const std::string& tag) {
    p = fs::temp_directory_path() / ("ckb_td_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(p);
  }
  ~TmpDir() {
    std::error_code ec;
    fs::remove_all(p, ec);
  }
};

bool same_bytes(const AnyConstView& a, std::span<const std::byte> b) {
  Tensor t = Tensor::copy_of(a);
  return t.size_bytes() == b.size() && std::memcmp(t.data(), b.data(), b.size()) == 0;
}

void check_error(const std::function<void()>& f, const std::vector<std::string>& needles) {
  try {
    f();
  } catch (const Error& e) {
    const std::string m = e.what();
    for (const auto& n : needles) BOOST_CHECK_MESSAGE(m.find(n) != std::string::npos, "message '" << m << "' lacks '" << n << "'");
    return;
  }
  BOOST_ERROR("no error raised");
}

// Rebuilds the writer's input from a Megatron-made checkpoint's metadata (same keys, order,
// chunks, strides and index hints) with the tensor bytes taken from the safetensors reference.
std::vector<td::WriteEntry> entries_like(const td::Metadata& md, const safetensors::File& ref) {
  std::vector<td::WriteEntry> out;
  for (const auto& e : md.entries) {
    if (e.bytes) {
      out.push_back(td::WriteEntry::extra_state_none(e.fqn));
      continue;
    }
    td::WriteEntry w;
    w.fqn = e.fqn;
    w.dtype = e.dtype;
    w.size = e.size;
    w.strides = e.strides;
    const AnyConstView whole = ref.view(e.fqn);
    BOOST_REQUIRE(whole.shape == e.size);
    for (const auto& c : e.chunks) {
      td::WriteChunk wc;
      wc.offsets = c.offsets;
      wc.sizes = c.sizes;
      wc.index = c.index;
      wc.produce = [whole, c](Tensor&) {
        AnyConstView v = whole;
        for (std::size_t d = 0; d < c.offsets.size(); ++d) v = v.slice(d, c.offsets[d], c.offsets[d] + c.sizes[d]);
        return v;
      };
      w.chunks.push_back(std::move(wc));
    }
    out.push_back(std::move(w));
  }
  return out;
}

// common.pt of the `simple` fixture: {'iteration': 7, 'args': {'hidden_size': 8, 'name': 'simple'}}
pk::Value simple_common() {
  pk::Value args = pk::Value::dict();
  args.set(pk::Value(std::string("hidden_size")), pk::Value(8));
  args.set(pk::Value(std::string("name")), pk::Value(std::string("simple")));
  pk::Value c = pk::Value::dict();
  c.set(pk::Value(std::string("iteration")), pk::Value(7));
  c.set(pk::Value(std::string("args")), args);
  return c;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(torch_dist)

BOOST_AUTO_TEST_CASE(reads_megatron_checkpoints) {
  for (const std::string name : {"simple", "gpt_tiny"}) {
    BOOST_TEST_MESSAGE("fixture " << name);
    td::Reader r(kData / name);
    safetensors::File ref(kData / (name + ".ref.safetensors"));
    std::size_t tensors = 0, objects = 0;
    for (const auto& e : r.metadata().entries) {
      if (e.bytes) {
        // a local-spec linear's _extra_state: ShardedObject data None, saved as torch.save([None])
        pk::ObjectPtr o = r.read_object(e.fqn);
        BOOST_REQUIRE(o->is(pk::Kind::List));
        BOOST_CHECK_EQUAL(o->items.size(), 1u);
        BOOST_CHECK(o->items[0]->is_none());
        ++objects;
        continue;
      }
      const auto& ti = ref.at(e.fqn);
      BOOST_CHECK(ti.dtype == e.dtype);
      BOOST_CHECK(ti.shape == e.size);
      Tensor t = r.read(e.fqn);
      BOOST_CHECK_MESSAGE(same_bytes(t.cview(), ref.bytes(ti)), name << ": " << e.fqn << " differs from the reference");
      ++tensors;
    }
    BOOST_CHECK_EQUAL(tensors, ref.size());  // every reference tensor is in the checkpoint
    BOOST_CHECK_GT(objects, 0u);
    // a region across chunks: one expert of a stacked expert tensor, the middle rows of fc1
    const std::string ex = name == "simple" ? "experts.weight" : "decoder.layers.1.mlp.experts.experts.linear_fc1.weight";
    const auto& e = r.entry(ex);
    Shape off(e.size.size(), 0), sz = e.size;
    off[0] = 1;
    sz[0] = 1;
    off[1] = 1;
    sz[1] = e.size[1] - 2;
    Tensor part = r.read_region(ex, off, sz);
    AnyConstView want = ref.view(ex).slice(0, 1, 2).slice(1, 1, e.size[1] - 1);
    Tensor wt = Tensor::copy_of(want);
    BOOST_CHECK(same_bytes(part.cview(), std::span<const std::byte>(wt.data(), wt.size_bytes())));
  }
}

BOOST_AUTO_TEST_CASE(common_and_keys) {
  td::Reader s(kData / "simple");
  auto c = s.common();
  BOOST_REQUIRE(c);
  BOOST_CHECK_EQUAL(c->root()->get("iteration")->as_int(), 7);
  BOOST_CHECK_EQUAL(c->root()->get("args")->get("name")->as_str(), "simple");
  const auto& m = s.metadata();
  BOOST_CHECK_EQUAL(m.checkpoint_id, "simple");
  BOOST_CHECK_EQUAL(m.version, "1.0.0");
  // chunk layouts as Megatron-Core defines them
  const auto& fc1 = s.entry("mlp.linear_fc1.weight");
  BOOST_REQUIRE_EQUAL(fc1.chunks.size(), 2u);
  BOOST_CHECK(fc1.chunks[1].offsets == (Shape{4, 0}));
  BOOST_CHECK(fc1.chunks[1].index == std::optional<std::int64_t>(1));
  const auto& ex = s.entry("experts.weight");
  BOOST_CHECK(!ex.strides);  // prepended expert axis: TensorProperties.strides is None
  BOOST_CHECK(ex.size == (Shape{3, 2, 4}));
  BOOST_CHECK(s.entry("layer.w").strides == std::optional<Shape>(Shape{8, 1}));
  BOOST_CHECK(s.entry("layer.w._extra_state/shard_0_1").bytes);

  td::Reader g(kData / "gpt_tiny");
  BOOST_CHECK_EQUAL(g.metadata().entries.size(), 86u);  // len(state_dict_metadata) by torch
  const auto& fc2 = g.entry("mtp.layers.0.transformer_layer.mlp.experts.experts.linear_fc2.weight");
  BOOST_CHECK(fc2.size == (Shape{4, 32, 16}));
  BOOST_CHECK_EQUAL(fc2.chunks.size(), 4u);
  BOOST_CHECK_EQUAL(g.entry("decoder.layers.1.mlp.experts.experts.linear_fc1.weight").chunks.size(), 8u);
  BOOST_CHECK(g.entry("decoder.layers.1.mlp.router.expert_bias").dtype == DType::F32);
  BOOST_CHECK(g.entry("decoder.layers.1.mlp.experts.experts.linear_fc1._extra_state/shard_3_4").bytes);
}

BOOST_AUTO_TEST_CASE(metadata_pickle_roundtrip) {
  for (const std::string name : {"simple", "gpt_tiny"}) {
    td::Reader r(kData / name);
    const auto bytes = td::pickle_metadata(r.metadata());
    const td::Metadata back = td::parse_metadata(std::as_bytes(std::span(bytes)), "rewritten");
    BOOST_CHECK(back.entries == r.metadata().entries);
    BOOST_CHECK_EQUAL(back.save_id, r.metadata().save_id);
    BOOST_CHECK_EQUAL(back.checkpoint_id, r.metadata().checkpoint_id);
  }
}

// The writer, given the same entries in the same order, writes Megatron-Core's data files byte for
// byte, the same common.pt and metadata.json, and a .metadata that parses to the same metadata.
BOOST_AUTO_TEST_CASE(writes_megatron_bytes) {
  for (const std::string name : {"simple", "gpt_tiny"}) {
    BOOST_TEST_MESSAGE("fixture " << name);
    const fs::path src = kData / name;
    td::Reader r(src);
    safetensors::File ref(kData / (name + ".ref.safetensors"));
    TmpDir out("w_" + name);
    td::WriteOptions o;
    o.files = 2;
    o.checkpoint_id = r.metadata().checkpoint_id;
    o.save_id = r.metadata().save_id;
    o.fsync = false;
    o.strides_field = true;  // the fixtures were saved under torch 2.15, which records strides
    BOOST_CHECK(r.metadata().strides_field);
    if (name == "simple") o.common = simple_common();
    const auto rep = td::write_checkpoint(out.p, entries_like(r.metadata(), ref), o);
    BOOST_CHECK_EQUAL(rep.files.size(), 2u);
    for (const char* f : {"__0_0.distcp", "__0_1.distcp", "metadata.json", "common.pt"})
      BOOST_CHECK_MESSAGE(slurp(out.p / f) == slurp(src / f), name << ": " << f << " differs from Megatron-Core's");
    const std::string mine = slurp(out.p / ".metadata");
    const td::Metadata back = td::parse_metadata(std::as_bytes(std::span(mine.data(), mine.size())), "ours");
    BOOST_CHECK(back.entries == r.metadata().entries);
    BOOST_CHECK_EQUAL(back.save_id, r.metadata().save_id);
    // and ckbridge reads it back
    td::Reader again(out.p);
    for (const auto& e : again.metadata().entries)
      if (!e.bytes) BOOST_CHECK(same_bytes(again.read(e.fqn).cview(), ref.bytes(e.fqn)));
    // Default: the 5-field TensorProperties state (every torch reads it; strides read as None), the
    // same data files; the Python test checks torch's own unpickling of both forms.
    TmpDir out5("w5_" + name);
    o.strides_field = false;
    td::write_checkpoint(out5.p, entries_like(r.metadata(), ref), o);
    for (const char* f : {"__0_0.distcp", "__0_1.distcp", "metadata.json", "common.pt"})
      BOOST_CHECK_MESSAGE(slurp(out5.p / f) == slurp(src / f), name << ": 5-field " << f << " differs");
    td::Reader five(out5.p);
    BOOST_CHECK(!five.metadata().strides_field);
    BOOST_REQUIRE_EQUAL(five.metadata().entries.size(), r.metadata().entries.size());
    for (std::size_t i = 0; i < r.metadata().entries.size(); ++i) {
      td::Entry want = r.metadata().entries[i];
      want.strides.reset();
      BOOST_CHECK(five.metadata().entries[i] == want);
    }
  }
}

BOOST_AUTO_TEST_CASE(refuses_bad_input) {
  const fs::path src = kData / "simple";
  auto fresh = [&](TmpDir& t) {
    fs::create_directories(t.p);
    for (const auto& e : fs::directory_iterator(src)) fs::copy_file(e.path(), t.p / e.path().filename());
  };
  {  // missing data file
    TmpDir t("missing");
    fresh(t);
    fs::remove(t.p / "__0_1.distcp");
    check_error([&] { td::Reader r(t.p); }, {"__0_1.distcp", "data file missing"});
  }
  {  // truncated data file
    TmpDir t("trunc");
    fresh(t);
    fs::resize_file(t.p / "__0_1.distcp", fs::file_size(t.p / "__0_1.distcp") - 100);
    check_error([&] { td::Reader r(t.p); }, {"__0_1.distcp", "truncated", "experts.weight"});
  }
  {  // metadata pointing outside a file
    TmpDir t("outside");
    fresh(t);
    td::Metadata m = td::Reader(src).metadata();
    for (auto& e : m.entries)
      if (e.fqn == "layer.b") e.chunks[0].offset = 1u << 20;
    const auto pk = td::pickle_metadata(m);
    std::ofstream(t.p / ".metadata", std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(pk.data()), pk.size());
    check_error([&] { td::Reader r(t.p); }, {"__0_1.distcp", "layer.b", "1048576"});
  }
  {  // a flipped byte inside a tensor item: the embedded archive's CRC catches it on read
    TmpDir t("flip");
    fresh(t);
    td::Reader ok(src);
    const auto& c = ok.entry("layer.b").chunks[0];
    std::string d = slurp(t.p / c.file);
    const auto rec = ok.item(ok.entry("layer.b"), c).zip().record("data/0");
    d[c.offset + rec.data_offset + 1] ^= 0x5A;  // inside the tensor's bytes
    std::ofstream(t.p / c.file, std::ios::binary | std::ios::trunc) << d;
    td::Reader r(t.p);
    check_error([&] { r.read("layer.b"); }, {"layer.b", "CRC"});
  }
  {  // not a torch_dist checkpoint / no metadata
    TmpDir t("nometa");
    fresh(t);
    fs::remove(t.p / ".metadata");
    check_error([&] { td::Reader r(t.p); }, {".metadata"});
    fs::remove(t.p / "metadata.json");
    check_error([&] { td::Reader r(t.p); }, {"metadata.json"});
  }
}

BOOST_AUTO_TEST_CASE(writer_refuses_bad_plans) {
  TmpDir t("plans");
  td::WriteEntry w;
  w.fqn = "x";
  w.dtype = DType::F32;
  w.size = {4};
  w.chunks.push_back({{2}, {3}, std::nullopt, [](Tensor& s) { s = Tensor(DType::F32, {3}); return s.cview(); }});
  check_error([&] { td::write_checkpoint(t.p, {w}, {}); }, {"'x'", "outside"});
  BOOST_CHECK(!fs::exists(t.p / "metadata.json"));
  // non-empty target
  fs::create_directories(t.p);
  std::ofstream(t.p / "keep.txt") << "x";
  w.chunks[0].offsets = {0};
  w.size = {3};
  check_error([&] { td::write_checkpoint(t.p, {w}, {}); }, {"not empty", "keep.txt"});
  // a producer that makes the wrong shape: nothing is left under a final name
  fs::remove(t.p / "keep.txt");
  w.chunks[0].produce = [](Tensor& s) { s = Tensor(DType::F32, {2}); return s.cview(); };
  check_error([&] { td::write_checkpoint(t.p, {w}, {}); }, {"'x'", "producer"});
  BOOST_CHECK(fs::is_empty(t.p));
}

// Resumable writing: a write that fails part-way (a producer throws after some chunks) leaves
// partial data files and progress records; the same write again continues them and ends with
// Megatron-Core's bytes, as an uninterrupted write does; over a completed write it keeps every file.
BOOST_AUTO_TEST_CASE(resumable_write_continues) {
  const fs::path src = kData / "gpt_tiny";
  td::Reader r(src);
  safetensors::File ref(kData / "gpt_tiny.ref.safetensors");
  TmpDir out("resume");
  td::WriteOptions o;
  o.files = 2;
  o.checkpoint_id = r.metadata().checkpoint_id;
  o.save_id = r.metadata().save_id;
  o.fsync = false;
  o.progress_dir = out.p / ".progress";
  o.sync_bytes = 1;  // record after every item
  o.strides_field = true;  // compared with the torch 2.15 fixture's metadata below
  for (const std::size_t fail_after : {std::size_t(5), std::size_t(40)}) {
    fs::remove_all(out.p);
    std::vector<td::WriteEntry> failing = entries_like(r.metadata(), ref);
    auto count = std::make_shared<std::atomic<std::size_t>>(0);
    for (auto& e : failing)
      for (auto& c : e.chunks)
        if (c.produce)
          c.produce = [inner = c.produce, count, fail_after](Tensor& s) {
            if (++*count > fail_after) fail("injected failure");
            return inner(s);
          };
    check_error([&] { td::write_checkpoint(out.p, failing, o); }, {"injected failure"});
    BOOST_CHECK(!fs::exists(out.p / "metadata.json"));
    bool partial = false;
    for (const auto& f : fs::directory_iterator(out.p))
      partial |= f.path().filename().string().ends_with(".ckb-partial");
    BOOST_CHECK_MESSAGE(partial, "no partial data file kept");
    const auto rep = td::write_checkpoint(out.p, entries_like(r.metadata(), ref), o);
    BOOST_CHECK_MESSAGE(rep.resumed_bytes > 0 && rep.resumed_bytes < rep.bytes, "kept " << rep.resumed_bytes << " of " << rep.bytes);
    for (const char* f : {"__0_0.distcp", "__0_1.distcp", "metadata.json"})
      BOOST_CHECK_MESSAGE(slurp(out.p / f) == slurp(src / f), "resumed after " << fail_after << ": " << f << " differs");
    const std::string mine = slurp(out.p / ".metadata");
    BOOST_CHECK(td::parse_metadata(std::as_bytes(std::span(mine.data(), mine.size())), "ours").entries == r.metadata().entries);
    for (const auto& f : fs::directory_iterator(out.p))
      BOOST_CHECK_MESSAGE(!f.path().filename().string().ends_with(".ckb-partial"), "left behind: " << f.path());
  }
  // over a completed write: every data file kept
  const auto rep = td::write_checkpoint(out.p, entries_like(r.metadata(), ref), o);
  BOOST_CHECK_EQUAL(rep.resumed_bytes, rep.bytes);
  BOOST_CHECK(slurp(out.p / "__0_0.distcp") == slurp(src / "__0_0.distcp"));
}

BOOST_AUTO_TEST_SUITE_END()
