#pragma once
// Loads YAML configuration the way LoongForge's Hydra/OmegaConf setup composes it, into one fully
// resolved YAML::Node:
//  - defaults lists: `_self_` ordering (implicitly last, as in Hydra >= 1.1), config-group
//    entries `group@package: option` (mandatory `???`, `null` = skip, `optional`, `override`,
//    lists = multi-select), plain config entries (paths relative to the including file, or
//    absolute from a search root with a leading '/'), `# @package` headers;
//  - config groups found next to the including file, in `hydra.searchpath` (file:// URLs), in
//    LoadOptions::search_path, and (extension) in the ancestors of the primary file's directory,
//    so LoongForge's tree works without LOONGFORGE_PATH;
//  - Hydra command-line style overrides: `group@package=option` (an option ending in .yaml or
//    containing '/' is a file path), `group=option`, and `a.b.c=value` for values;
//  - OmegaConf interpolation: `${a.b}`, `${a[0]}`, `${a[key.with.dots]}`, relative `${.x}`,
//    `${..x}`, nested `${a.${b}}`, `${oc.env:VAR}`, `${oc.env:VAR,default}`,
//    `${oc.select:key,default}`, `\${` escapes, and LoongForge's `${moe_freq:"[0]*3+[1]*58"}`
//    (a list expression evaluated to a sequence of ints). A string that is exactly one
//    interpolation takes the referenced node (map, list or scalar); otherwise the pieces are
//    concatenated. Cycles are refused.
// Keys containing dots (`attention.q_down`) are plain keys. The `hydra` and `defaults` nodes are
// removed from the result. Errors name the file and the key.
#include <yaml-cpp/yaml.h>

#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ckbridge/core/error.hpp"

namespace ckbridge::config {

struct LoadOptions {
  // Hydra-style overrides applied during composition ("deepseek3@module=deepseek_v3",
  // "module.num_layers=4").
  std::vector<std::string> overrides;
  // Extra config roots searched for config groups (after the including file's directory and
  // hydra.searchpath).
  std::vector<std::filesystem::path> search_path;
  // Also search the ancestors of the primary file's directory for config groups.
  bool search_ancestors = true;
  // Environment lookup for ${oc.env:...}; default std::getenv.
  std::function<std::optional<std::string>(const std::string&)> env;
  // false: an interpolation that cannot be resolved is left as text and reported in
  // `unresolved` (OmegaConf resolves lazily, so keys nobody reads may hold broken references).
  bool strict = true;
  std::vector<std::string>* unresolved = nullptr;
};

// Evaluates a Megatron/LoongForge moe_layer_freq list expression: "[0]*3+[1]*58", "[1,0]*2",
// "3*[1]", "[0,1,1]". Errors mention `what`.
inline std::vector<long long> eval_list_expression(std::string_view expr, std::string_view what = "list expression") {
  std::size_t i = 0;
  auto bad = [&](std::string_view why) -> void {
    fail(what, ": cannot evaluate '", expr, "': ", why, " at offset ", i);
  };
  auto ws = [&] {
    while (i < expr.size() && std::isspace(static_cast<unsigned char>(expr[i]))) ++i;
  };
  auto integer = [&]() -> long long {
    ws();
    bool neg = false;
    if (i < expr.size() && (expr[i] == '-' || expr[i] == '+')) neg = expr[i++] == '-';
    const std::size_t b = i;
    long long v = 0;
    while (i < expr.size() && std::isdigit(static_cast<unsigned char>(expr[i]))) {
      v = v * 10 + (expr[i++] - '0');
      if (v > 1'000'000'000) bad("number too large");
    }
    if (i == b) bad("expected a number");
    return neg ? -v : v;
  };
  auto list = [&]() -> std::vector<long long> {
    ws();
    if (i >= expr.size() || expr[i] != '[') bad("expected '['");
    ++i;
    std::vector<long long> out;
    ws();
    if (i < expr.size() && expr[i] == ']') { ++i; return out; }
    while (true) {
      out.push_back(integer());
      ws();
      if (i < expr.size() && expr[i] == ',') { ++i; ws(); if (i < expr.size() && expr[i] == ']') { ++i; return out; } continue; }
      if (i < expr.size() && expr[i] == ']') { ++i; return out; }
      bad("expected ',' or ']'");
    }
  };
  auto repeat = [&](const std::vector<long long>& v, long long n) {
    if (n < 0) bad("negative repeat count");
    if (static_cast<double>(n) * static_cast<double>(v.size()) > 1e6) bad("expansion too large");
    std::vector<long long> out;
    for (long long k = 0; k < n; ++k) out.insert(out.end(), v.begin(), v.end());
    return out;
  };
  std::vector<long long> result;
  while (true) {
    ws();
    std::vector<long long> term;
    if (i < expr.size() && expr[i] == '[') {
      term = list();
      ws();
      while (i < expr.size() && expr[i] == '*') { ++i; term = repeat(term, integer()); ws(); }
    } else {
      const long long n = integer();
      ws();
      if (i < expr.size() && expr[i] == '*') { ++i; term = repeat(list(), n); }
      else bad("expected '[' (a bare number is only allowed as the whole expression)");
    }
    if (result.size() + term.size() > 1'000'000) bad("expansion too large");  // bounds the sum, not only each term
    result.insert(result.end(), term.begin(), term.end());
    ws();
    if (i >= expr.size()) return result;
    if (expr[i] != '+') bad("expected '+'");
    ++i;
  }
}

namespace detail {
// Whether p names a regular file; a name the OS refuses (too long, a NUL-free but invalid path)
// counts as no file instead of throwing std::filesystem::filesystem_error.
inline bool regular_file(const std::filesystem::path& p) {
  std::error_code ec;
  return std::filesystem::is_regular_file(p, ec);
}


using Path = std::vector<std::string>;

// A key that does not exist (distinguished so that oc.select can fall back to its default).
struct KeyNotFound : Error {
  using Error::Error;
  KeyNotFound(const std::string& m, bool named) : Error(m), named_reference(named) {}
  bool named_reference = false;  // the message already names the interpolation at fault
};

inline std::string path_str(const Path& p) {
  std::string s;
  for (const auto& k : p) {
    if (!s.empty()) s += '.';
    s += k;
  }
  return s.empty() ? std::string("<root>") : s;
}

// Map keys must be scalars (YAML allows complex keys; configs never use them).
inline std::string key_str(const YAML::Node& k, const std::string& file, const std::string& where) {
  if (!k.IsScalar()) fail(file, ": key under '", where.empty() ? std::string("<root>") : where, "' is not a scalar");
  return k.Scalar();
}

inline bool has_interp(const YAML::Node& n) {
  return n.IsScalar() && n.Scalar().find("${") != std::string::npos;
}

// Child lookup that never inserts (non-const operator[] would).
inline std::optional<YAML::Node> child(const YAML::Node& n, const std::string& key) {
  if (n.IsMap()) {
    for (auto it = n.begin(); it != n.end(); ++it)
      if (it->first.IsScalar() && it->first.Scalar() == key) return it->second;
    return std::nullopt;
  }
  if (n.IsSequence()) {
    if (key.empty() || key.size() > 9) return std::nullopt;
    for (char c : key)
      if (!std::isdigit(static_cast<unsigned char>(c))) return std::nullopt;
    const std::size_t idx = std::stoul(key);
    if (idx >= n.size()) return std::nullopt;
    return n[idx];
  }
  return std::nullopt;
}

inline void set_child(YAML::Node parent, const std::string& key, const YAML::Node& value) {
  if (parent.IsSequence()) parent[std::stoul(key)] = value;
  else parent[key] = value;
}

// The most nodes one file may hold with its aliases expanded. YAML aliases share nodes, so a
// kilobyte of anchors can stand for billions of nodes ("billion laughs"); every later step
// (composition, interpolation) walks the expanded tree, so the bound is checked right after
// parsing. Real model and convert configs hold a few thousand.
inline constexpr std::size_t kMaxDocumentNodes = 100'000;

// Walks a parsed document as a tree (aliases expanded): refuses more than kMaxDocumentNodes
// nodes and duplicate keys in a map (yaml-cpp keeps both and lookups see only the first, so the
// file would not mean what it says).
inline void check_document(const YAML::Node& n, const std::string& file, Path& at, std::size_t& visits) {
  if (++visits > kMaxDocumentNodes)
    fail(file, ": key '", path_str(at), "': the document expands to more than ", kMaxDocumentNodes,
         " nodes (YAML anchors and aliases repeated many times over?)");
  if (n.IsMap()) {
    std::set<std::string> seen;
    for (auto it = n.begin(); it != n.end(); ++it) {
      const YAML::Node k = it->first;  // copies: it-> yields a temporary proxy
      const YAML::Node v = it->second;
      const std::string key = k.IsScalar() ? k.Scalar() : std::string("<complex key>");
      at.push_back(key);
      if (k.IsScalar() && !seen.insert(key).second)
        fail(file, ": line ", k.Mark().line + 1, ": duplicate key '", path_str(at), "'");
      check_document(v, file, at, visits);
      at.pop_back();
    }
  } else if (n.IsSequence()) {
    for (std::size_t i = 0; i < n.size(); ++i) {
      at.push_back(std::to_string(i));
      check_document(n[i], file, at, visits);
      at.pop_back();
    }
  }
}

inline YAML::Node parse_file(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) fail(file.string(), ": cannot open config file");
  YAML::Node doc;
  try {
    doc = YAML::Load(in);
  } catch (const YAML::Exception& e) {
    fail(file.string(), ": YAML syntax error at line ", e.mark.line + 1, ", column ", e.mark.column + 1, ": ", e.msg);
  }
  Path at;
  std::size_t visits = 0;
  check_document(doc, file.string(), at, visits);
  return doc;
}

// Deep merge (OmegaConf): maps merge key by key, anything else replaces; a `???` source value
// does not replace an existing destination value.
inline void merge_into(YAML::Node dst, const YAML::Node& src, const Path& at, const std::string& file,
                       std::map<std::string, std::string>& origin) {
  for (auto it = src.begin(); it != src.end(); ++it) {
    const std::string key = key_str(it->first, file, path_str(at));
    Path p = at;
    p.push_back(key);
    const YAML::Node sv = it->second;  // a copy: it-> yields a temporary proxy
    auto dv = child(dst, key);
    if (dv && dv->IsMap() && sv.IsMap()) {
      merge_into(*dv, sv, p, file, origin);
      continue;
    }
    if (dv && sv.IsScalar() && sv.Scalar() == "???") continue;
    dst[key] = YAML::Clone(sv);
    origin[path_str(p)] = file;
  }
  if (src.size() == 0) origin.emplace(path_str(at), file);
}

inline YAML::Node ensure_map_at(YAML::Node root, const Path& pkg, const std::string& file) {
  YAML::Node cur = root;
  Path done;
  for (const auto& k : pkg) {
    done.push_back(k);
    auto c = child(cur, k);
    if (!c || !c->IsMap()) {
      if (c && c->IsDefined() && !c->IsNull())
        fail(file, ": cannot mount a config at package '", path_str(pkg), "': '", path_str(done), "' is not a map");
      cur[k] = YAML::Node(YAML::NodeType::Map);
      c = child(cur, k);
    }
    cur.reset(*c);
  }
  return cur;
}

inline Path split_dotted(std::string_view s) {
  Path p;
  std::size_t b = 0;
  while (b <= s.size()) {
    const std::size_t e = s.find('.', b);
    const auto tok = s.substr(b, e == std::string_view::npos ? std::string_view::npos : e - b);
    if (!tok.empty()) p.emplace_back(tok);
    if (e == std::string_view::npos) break;
    b = e + 1;
  }
  return p;
}

inline std::string trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return std::string(s);
}

// ------------------------------------------------------------------------------------------
// Composition of defaults lists.
class Composer {
public:
  Composer(const LoadOptions& o, const std::filesystem::path& primary) : opt_(o) {
    for (const auto& ov : o.overrides) {
      const auto eq = ov.find('=');
      if (eq == std::string::npos || eq == 0) fail("override '", ov, "': expected key=value");
      std::string key = trim(std::string_view(ov).substr(0, eq));
      if (!key.empty() && key[0] == '+') key.erase(0, 1);
      overrides_.emplace_back(key, trim(std::string_view(ov).substr(eq + 1)));
    }
    primary_dir_ = std::filesystem::absolute(primary).parent_path();
  }

  YAML::Node compose(const std::filesystem::path& primary) {
    root_ = YAML::Node(YAML::NodeType::Map);
    load_config(std::filesystem::absolute(primary), {}, true, 0);
    // Value overrides (a.b.c=value): anything that did not select a group option.
    for (const auto& [k, v] : overrides_) {
      if (used_.count(k)) continue;
      if (k.find('@') != std::string::npos)
        fail("override '", k, "=", v, "': no defaults entry for config group '", k, "'");
      const Path p = split_dotted(k);
      if (p.empty()) fail("override '", k, "=", v, "': empty key");
      Path parent(p.begin(), p.end() - 1);
      YAML::Node at = ensure_map_at(root_, parent, "override");
      YAML::Node val;
      try {
        val = YAML::Load(v);
      } catch (const YAML::Exception& e) {
        fail("override '", k, "=", v, "': bad value: ", e.msg);
      }
      at[p.back()] = val;
      origin_[path_str(p)] = "override '" + k + "'";
    }
    return root_;
  }
  std::map<std::string, std::string>& origins() { return origin_; }
  std::vector<std::filesystem::path>& searchpath() { return searchpath_; }

private:
  struct Entry {
    enum Kind { Self, Config, Group } kind = Self;
    std::string group;            // group path or config path
    std::optional<std::string> package;
    std::vector<std::string> options;
    bool optional = false;
  };

  std::optional<std::filesystem::path> find_group_option(const std::string& group, const std::string& option,
                                                         const std::filesystem::path& here) const {
    // An option that names a file (override "group@pkg=path/to/model.yaml") is used as is.
    if (option.ends_with(".yaml") || option.ends_with(".yml") || option.find('/') != std::string::npos) {
      std::filesystem::path f(option);
      if (detail::regular_file(f)) return std::filesystem::absolute(f);
    }
    const bool absolute = !group.empty() && group[0] == '/';
    const std::string g = absolute ? group.substr(1) : group;
    std::vector<std::filesystem::path> roots;
    if (!absolute) roots.push_back(here);
    for (const auto& s : searchpath_) roots.push_back(s);
    for (const auto& s : opt_.search_path) roots.push_back(s);
    if (opt_.search_ancestors)
      for (auto d = primary_dir_; ; d = d.parent_path()) {
        roots.push_back(d);
        if (d == d.parent_path()) break;
      }
    for (const auto& r : roots) {
      for (const char* ext : {".yaml", ".yml"}) {
        auto f = r / g / (option + ext);
        if (detail::regular_file(f)) return f;
      }
    }
    return std::nullopt;
  }

  static std::string strip_slash(std::string g) {
    if (!g.empty() && g[0] == '/') g.erase(0, 1);
    return g;
  }

  static std::optional<std::string> package_header(const std::filesystem::path& file) {
    std::ifstream in(file);
    std::string line;
    for (int n = 0; n < 20 && std::getline(in, line); ++n) {
      const auto t = trim(line);
      if (t.rfind("# @package", 0) == 0) return trim(std::string_view(t).substr(10));
      if (!t.empty() && t[0] != '#') break;
    }
    return std::nullopt;
  }

  // Default package of a group: the including config's package + the group path (dotted).
  static Path group_package(const Path& parent, std::string group) {
    if (!group.empty() && group[0] == '/') group.erase(0, 1);
    for (auto& c : group)
      if (c == '/') c = '.';
    Path p = parent;
    for (auto& k : split_dotted(group)) p.push_back(k);
    return p;
  }

  static Path package_path(const Path& parent, const std::string& pkg) {
    if (pkg == "_global_") return {};
    if (pkg.rfind("_global_.", 0) == 0) return split_dotted(pkg.substr(9));
    if (pkg == "_here_") return parent;
    Path p = parent;
    for (auto& k : split_dotted(pkg)) p.push_back(k);
    return p;
  }

  std::vector<Entry> parse_defaults(const YAML::Node& d, const std::string& file) const {
    std::vector<Entry> out;
    if (!d.IsSequence()) fail(file, ": key 'defaults' must be a list");
    for (std::size_t i = 0; i < d.size(); ++i) {
      const YAML::Node& it = d[i];
      const std::string where = file + ": defaults[" + std::to_string(i) + "]";
      Entry e;
      if (it.IsScalar()) {
        const std::string s = it.Scalar();
        if (s == "_self_") { e.kind = Entry::Self; out.push_back(e); continue; }
        e.kind = Entry::Config;
        std::string name = s;
        if (auto at = name.find('@'); at != std::string::npos) { e.package = name.substr(at + 1); name.resize(at); }
        e.group = name;
        out.push_back(e);
        continue;
      }
      if (!it.IsMap() || it.size() != 1) fail(where, ": expected '_self_', a config name or 'group: option'");
      std::string key = key_str(it.begin()->first, file, "defaults[" + std::to_string(i) + "]");
      const YAML::Node val = it.begin()->second;
      e.kind = Entry::Group;
      if (key.rfind("override ", 0) == 0) {
        // `override group: option` applies to the groups this file's defaults pull in.
        key = trim(std::string_view(key).substr(9));
        e.optional = true;
        e.group = "\x01override:" + key;
      } else if (key.rfind("optional ", 0) == 0) {
        key = trim(std::string_view(key).substr(9));
        e.optional = true;
      }
      if (e.group.empty() || e.group[0] != '\x01') {
        if (auto at = key.find('@'); at != std::string::npos) { e.package = key.substr(at + 1); key.resize(at); }
        e.group = key;
      }
      if (val.IsNull()) e.options.clear();
      else if (val.IsScalar()) e.options.push_back(val.Scalar());
      else if (val.IsSequence()) {
        for (const auto& v : val) {
          if (!v.IsScalar()) fail(where, ": options of group '", key, "' must be names");
          e.options.push_back(v.Scalar());
        }
      }
      else fail(where, ": option of group '", key, "' must be a name, a list of names or null");
      out.push_back(e);
    }
    return out;
  }

  void load_config(const std::filesystem::path& file, const Path& pkg, bool primary, int depth) {
    if (depth > 32) fail(file.string(), ": defaults lists nested too deeply (include cycle?)");
    const std::string fname = file.string();
    YAML::Node doc = parse_file(file);
    if (doc.IsNull() || !doc.IsDefined()) doc = YAML::Node(YAML::NodeType::Map);
    if (!doc.IsMap()) fail(fname, ": top level must be a map");
    YAML::Node self(YAML::NodeType::Map);
    YAML::Node defaults;
    for (auto it = doc.begin(); it != doc.end(); ++it) {
      const std::string k = key_str(it->first, fname, "");
      if (k == "defaults") defaults = it->second;
      else if (k == "hydra" && primary) read_searchpath(it->second, doc, fname);
      else if (k != "hydra") self[k] = it->second;
    }
    std::vector<Entry> entries;
    if (defaults.IsDefined() && !defaults.IsNull()) entries = parse_defaults(defaults, fname);
    bool has_self = false;
    for (const auto& e : entries) has_self |= e.kind == Entry::Self;
    if (!has_self) entries.push_back(Entry{});  // Hydra >= 1.1: own content last
    // `override` entries of this list replace the option of a group in this list or below.
    const std::size_t scope = scoped_overrides_.size();
    for (const auto& e : entries)
      if (e.kind == Entry::Group && e.group.rfind("\x01override:", 0) == 0)
        scoped_overrides_.emplace_back(strip_slash(e.group.substr(10)), e.options);
    struct Pop {
      std::vector<std::pair<std::string, std::vector<std::string>>>& v;
      std::size_t n;
      ~Pop() { v.resize(n); }
    } pop{scoped_overrides_, scope};
    const auto here = file.parent_path();
    for (auto e : entries) {
      if (e.kind == Entry::Self) {
        merge_into(ensure_map_at(root_, pkg, fname), self, pkg, fname, origin_);
        continue;
      }
      if (e.kind == Entry::Group && e.group.rfind("\x01override:", 0) == 0) continue;
      if (e.kind == Entry::Config) {
        const bool abs = e.group[0] == '/';
        const std::string rel = abs ? e.group.substr(1) : e.group;
        const auto slash = rel.rfind('/');
        const std::string dir = slash == std::string::npos ? "" : rel.substr(0, slash);
        const std::string name = slash == std::string::npos ? rel : rel.substr(slash + 1);
        const auto found = find_group_option((abs ? "/" : "") + dir, name, here);
        if (!found) fail(fname, ": defaults entry '", e.group, "': config file not found");
        Path sub;
        if (e.package) sub = package_path(pkg, *e.package);
        else if (auto h = package_header(*found)) sub = package_path({}, *h);
        else sub = group_package(pkg, dir);
        load_config(*found, sub, false, depth + 1);
        continue;
      }
      // Config group: command-line override, then this list's `override`, then the entry.
      std::vector<std::string> options = e.options;
      const std::string gkey = e.group + (e.package ? "@" + *e.package : "");
      for (auto it = scoped_overrides_.rbegin(); it != scoped_overrides_.rend(); ++it)
        if (it->first == strip_slash(e.group)) options = it->second;  // outermost wins
      for (const auto& [k, v] : overrides_) {
        if (k == gkey || k == e.group || k == strip_slash(e.group)) {
          options = {v};
          used_.insert(k);
        }
      }
      if (options.empty()) continue;  // `group: null`
      for (const auto& opt : options) {
        if (opt == "???")
          fail(fname, ": defaults entry '", gkey, ": ?\?\?' is mandatory: pass the override '", gkey, "=<option>'");
        const auto found = find_group_option(e.group, opt, here);
        if (!found) {
          if (e.optional) continue;
          fail(fname, ": defaults entry '", gkey, ": ", opt, "': no config '", opt, ".yaml' in group '", e.group,
               "' (searched next to the file, hydra.searchpath, the search path and the primary file's ancestors)");
        }
        Path sub;
        if (e.package) sub = package_path(pkg, *e.package);
        else if (auto h = package_header(*found)) sub = package_path({}, *h);
        else sub = group_package(pkg, e.group);
        load_config(*found, sub, false, depth + 1);
      }
    }
  }

  void read_searchpath(const YAML::Node& hydra, const YAML::Node& doc, const std::string& fname);

  const LoadOptions& opt_;
  std::filesystem::path primary_dir_;
  std::vector<std::pair<std::string, std::string>> overrides_;
  std::set<std::string> used_;
  std::vector<std::pair<std::string, std::vector<std::string>>> scoped_overrides_;
  YAML::Node root_;
  std::map<std::string, std::string> origin_;
  std::vector<std::filesystem::path> searchpath_;
};

// ------------------------------------------------------------------------------------------
// Interpolation resolution over a composed tree.
class Resolver {
public:
  Resolver(YAML::Node root, const LoadOptions& o, const std::map<std::string, std::string>* origin,
           std::string fallback_file)
      : root_(root), opt_(o), origin_(origin), file_(std::move(fallback_file)) {}

  void resolve_all() { resolve_subtree({}); }

  // Resolves the node at `p` (and everything below it) in place and returns it.
  YAML::Node resolve_subtree(const Path& p) {
    YAML::Node n = resolve_at(p);
    // A map or list that came from an interpolation is a copy of an already resolved subtree.
    if (copied_subtrees_.count(path_str(p))) return n;
    if (n.IsMap() || n.IsSequence()) {
      std::vector<std::string> keys;
      if (n.IsMap()) for (auto it = n.begin(); it != n.end(); ++it) keys.push_back(key_str(it->first, file_of(p), path_str(p)));
      else for (std::size_t i = 0; i < n.size(); ++i) keys.push_back(std::to_string(i));
      for (const auto& k : keys) {
        Path c = p;
        c.push_back(k);
        if (opt_.strict) {
          resolve_subtree(c);
        } else {
          try {
            resolve_subtree(c);
          } catch (const Error& e) {
            if (opt_.unresolved) opt_.unresolved->push_back(e.what());
          }
        }
      }
    }
    return lookup(p);
  }

  std::string file_of(const Path& p) const {
    if (origin_) {
      for (std::size_t n = p.size() + 1; n-- > 0;) {
        auto it = origin_->find(path_str(Path(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(n))));
        if (it != origin_->end()) return it->second;
      }
    }
    return file_;
  }

private:
  [[noreturn]] void err(const Path& at, const std::string& what) const {
    fail(file_of(at), ": key '", path_str(at), "': ", what);
  }
  [[noreturn]] void not_found(const Path& at) const {
    throw KeyNotFound(ckbridge::detail::concat(file_of(at), ": key '", path_str(at), "': not found"));
  }

  // yaml-cpp looks a map key up by a linear scan, and every reference is looked up from the root:
  // a document of N keys that reference each other costs O(N^2) scans (a fuzzed 8 KB chain of 600
  // references took 1.5 s). The scanned entries are counted and bounded.
  static constexpr std::size_t kMaxScannedEntries = 20'000'000;
  void count_scan(const YAML::Node& n, const Path& at) const {
    if (n.IsMap() && (scanned_ += n.size()) > kMaxScannedEntries)
      err(at, "resolving the interpolations scans more than " + std::to_string(kMaxScannedEntries) +
                  " map entries (too many keys referring to each other)");
  }

  YAML::Node lookup(const Path& p) const {
    YAML::Node cur = root_;
    for (const auto& k : p) {
      count_scan(cur, p);
      auto c = child(cur, k);
      if (!c) not_found(p);
      cur.reset(*c);
    }
    return cur;
  }

  // Resolves the scalar at p if it holds an interpolation; the parents are resolved on the way.
  YAML::Node resolve_at(const Path& p) {
    YAML::Node cur = root_;
    Path walked;
    for (const auto& k : p) {
      if (has_interp(cur)) cur.reset(resolve_scalar(walked));
      count_scan(cur, p);
      auto c = child(cur, k);
      if (!c) {
        Path full = walked;
        full.push_back(k);
        not_found(full);
      }
      cur.reset(*c);
      walked.push_back(k);
    }
    if (has_interp(cur)) cur.reset(resolve_scalar(p));
    return cur;
  }

  YAML::Node resolve_scalar(const Path& p) {
    const std::string key = path_str(p);
    if (done_.count(key)) return lookup(p);
    // A key that failed before fails again at once with the same error: non-strict mode goes on
    // after errors, and re-walking a long broken chain from each of its keys costs
    // O(keys x chain length). (Keys of a chain nested too deep stay failed, even those that
    // would resolve on their own.)
    if (auto f = failed_.find(key); f != failed_.end()) {
      if (f->second.second) throw KeyNotFound(f->second.first, true);
      throw Error(f->second.first);
    }
    if (active_.count(key)) {
      std::string chain;
      for (const auto& s : stack_) chain += s + " -> ";
      err(p, "interpolation cycle: " + chain + key);
    }
    YAML::Node n = lookup(p);
    if (!has_interp(n)) return n;
    // Unwinds the cycle-detection state even when evaluation throws (non-strict mode goes on).
    struct Guard {
      Resolver& r;
      std::string k;
      ~Guard() {
        r.stack_.pop_back();
        r.active_.erase(k);
      }
    };
    if (stack_.size() >= 512) err(p, "interpolations nested more than 512 deep");
    active_.insert(key);
    stack_.push_back(key);
    YAML::Node value;
    try {
      Guard g{*this, key};
      value = eval_string(n.Scalar(), p);
    } catch (const KeyNotFound& e) {
      failed_.emplace(key, std::make_pair(std::string(e.what()), true));
      throw;
    } catch (const Error& e) {
      failed_.emplace(key, std::make_pair(std::string(e.what()), false));
      throw;
    }
    done_.insert(key);
    if (value.IsMap() || value.IsSequence()) copied_subtrees_.insert(key);
    if (p.empty()) {
      root_.reset(value);
    } else {
      Path parent(p.begin(), p.end() - 1);
      set_child(lookup(parent), p.back(), value);
    }
    return lookup(p);
  }

  // Finds the end of an interpolation starting at s[b] == '$', s[b+1] == '{'.
  std::size_t match_close(const std::string& s, std::size_t b, const Path& at) const {
    int depth = 0;
    char quote = 0;
    for (std::size_t i = b; i < s.size(); ++i) {
      const char c = s[i];
      if (quote) {
        if (c == '\\') { ++i; continue; }
        if (c == quote) quote = 0;
        continue;
      }
      if ((c == '"' || c == '\'') && depth > 0) { quote = c; continue; }
      if (c == '$' && i + 1 < s.size() && s[i + 1] == '{') { ++depth; ++i; continue; }
      if (c == '}' && --depth == 0) return i;
    }
    err(at, "unterminated interpolation in '" + s + "'");
  }

  YAML::Node eval_string(const std::string& s, const Path& at) {
    // Whole-string interpolation keeps the node type.
    if (s.size() >= 3 && s.compare(0, 2, "${") == 0 && match_close(s, 0, at) == s.size() - 1)
      return eval_body(s.substr(2, s.size() - 3), at);
    std::string out;
    for (std::size_t i = 0; i < s.size();) {
      if (s[i] == '\\' && i + 2 < s.size() && s[i + 1] == '$' && s[i + 2] == '{') {
        out += "${";
        i += 3;
        continue;
      }
      if (s[i] == '$' && i + 1 < s.size() && s[i + 1] == '{') {
        const std::size_t e = match_close(s, i, at);
        const YAML::Node v = eval_body(s.substr(i + 2, e - i - 2), at);
        if (!v.IsScalar() && !v.IsNull())
          err(at, "interpolation '" + s.substr(i, e - i + 1) + "' inside a string refers to a map or list");
        out += v.IsNull() ? "None" : v.Scalar();
        check_length(out, at);
        i = e + 1;
        continue;
      }
      out += s[i++];
    }
    count_built(out, at);
    YAML::Node r(out);
    return r;
  }

  // Substitutes nested ${...} inside an interpolation body (textually).
  std::string expand_nested(const std::string& body, const Path& at) {
    if (body.find("${") == std::string::npos) return body;
    std::string out;
    for (std::size_t i = 0; i < body.size();) {
      if (body[i] == '$' && i + 1 < body.size() && body[i + 1] == '{') {
        const std::size_t e = match_close(body, i, at);
        const YAML::Node v = eval_body(body.substr(i + 2, e - i - 2), at);
        if (!v.IsScalar()) err(at, "nested interpolation '" + body.substr(i, e - i + 1) + "' is not a scalar");
        out += v.Scalar();
        check_length(out, at);
        i = e + 1;
      } else {
        out += body[i++];
      }
    }
    return out;
  }

  static std::vector<std::string> split_args(const std::string& s) {
    std::vector<std::string> out;
    std::string cur;
    char quote = 0;
    int bracket = 0;
    for (char c : s) {
      if (quote) {
        cur += c;
        if (c == quote) quote = 0;
        continue;
      }
      if (c == '"' || c == '\'') quote = c;
      else if (c == '[' || c == '(') ++bracket;
      else if (c == ']' || c == ')') --bracket;
      else if (c == ',' && bracket == 0) {
        out.push_back(trim(cur));
        cur.clear();
        continue;
      }
      cur += c;
    }
    if (!trim(cur).empty() || !out.empty()) out.push_back(trim(cur));
    for (auto& a : out)
      if (a.size() >= 2 && (a.front() == '"' || a.front() == '\'') && a.back() == a.front()) a = a.substr(1, a.size() - 2);
    return out;
  }

  YAML::Node eval_body(const std::string& raw, const Path& at) {
    const std::string body = trim(expand_nested(raw, at));
    // Resolver call: name ':' args (a node path never contains ':').
    const auto colon = body.find(':');
    if (colon != std::string::npos) {
      const std::string name = trim(std::string_view(body).substr(0, colon));
      const auto args = split_args(body.substr(colon + 1));
      if (name == "oc.env") {
        if (args.empty() || args.size() > 2 || args[0].empty()) err(at, "${oc.env:VAR[,default]} needs a variable name");
        std::optional<std::string> v;
        if (opt_.env) v = opt_.env(args[0]);
        else if (const char* e = std::getenv(args[0].c_str())) v = std::string(e);
        if (v) return YAML::Node(*v);
        if (args.size() == 2) return args[1] == "null" ? YAML::Node(YAML::NodeType::Null) : YAML::Node(args[1]);
        err(at, "environment variable '" + args[0] + "' is not set (in '${" + raw + "}')");
      }
      if (name == "oc.select") {
        if (args.empty() || args.size() > 2) err(at, "${oc.select:key[,default]} needs a key");
        try {
          return YAML::Clone(resolve_ref(args[0], at));
        } catch (const KeyNotFound&) {
          if (args.size() == 2) return YAML::Node(args[1]);
          return YAML::Node(YAML::NodeType::Null);
        }
      }
      if (name == "moe_freq") {
        if (args.size() != 1) err(at, "${moe_freq:\"<list expression>\"} takes one argument");
        const std::string& e = args[0];
        const std::string t = trim(e);
        if (!t.empty() && std::isdigit(static_cast<unsigned char>(t[0])) && t.find('[') == std::string::npos) {
          (void)eval_list_expression("[" + t + "]", "moe_freq at '" + path_str(at) + "'");
          return YAML::Node(t);
        }
        const auto list = eval_list_expression(e, file_of(at) + ": key '" + path_str(at) + "': moe_freq");
        YAML::Node seq(YAML::NodeType::Sequence);
        for (long long v : list) seq.push_back(v);
        return seq;
      }
      err(at, "unknown resolver '" + name + "' in '${" + raw + "}' (supported: oc.env, oc.select, moe_freq)");
    }
    const YAML::Node target = resolve_ref(body, at);
    // Bounds the work of configs that reference big subtrees many times over ("billion laughs").
    copied_ = count_nodes(target, copied_);
    if (copied_ > kMaxCopiedNodes)
      err(at, "interpolations copy more than " + std::to_string(kMaxCopiedNodes) +
                  " nodes (interpolations that repeat each other?)");
    return YAML::Clone(target);
  }

  // Strings built by interpolation: each at most kMaxStringBytes, all together at most
  // kMaxInterpolatedBytes (strings that repeat each other double at every step).
  static constexpr std::size_t kMaxStringBytes = 1u << 20, kMaxInterpolatedBytes = 64u << 20;
  void check_length(const std::string& s, const Path& at) {
    if (s.size() > kMaxStringBytes)
      err(at, "interpolated string longer than " + std::to_string(kMaxStringBytes) +
                  " bytes (interpolations that repeat each other?)");
  }
  void count_built(const std::string& s, const Path& at) {
    built_ += s.size();
    if (built_ > kMaxInterpolatedBytes)
      err(at, "interpolated strings total more than " + std::to_string(kMaxInterpolatedBytes) +
                  " bytes (interpolations that repeat each other?)");
  }

  // Real configs copy a few hundred nodes; yaml-cpp's node copies get slower as the tree grows
  // (a fuzzed 635-byte file took 1.2 s at a 250000 bound), so the bound is kept tight.
  static constexpr std::size_t kMaxCopiedNodes = 20'000;
  static std::size_t count_nodes(const YAML::Node& n, std::size_t acc) {
    ++acc;
    if (acc > kMaxCopiedNodes) return acc;
    if (n.IsMap()) {
      for (auto it = n.begin(); it != n.end() && acc <= kMaxCopiedNodes; ++it) acc = count_nodes(it->second, acc);
    } else if (n.IsSequence()) {
      for (auto it = n.begin(); it != n.end() && acc <= kMaxCopiedNodes; ++it) acc = count_nodes(*it, acc);
    }
    return acc;
  }

  // Resolves a node reference (absolute or relative) to its fully resolved node.
  YAML::Node resolve_ref(const std::string& ref, const Path& at) {
    if (ref.empty()) err(at, "empty interpolation '${}'");
    Path target;
    std::size_t i = 0;
    if (ref[0] == '.') {
      std::size_t dots = 0;
      while (i < ref.size() && ref[i] == '.') { ++dots; ++i; }
      target = at;
      if (!target.empty()) target.pop_back();  // the container of the key holding the reference
      for (std::size_t d = 1; d < dots; ++d) {
        if (target.empty()) err(at, "relative interpolation '${" + ref + "}' goes above the root");
        target.pop_back();
      }
    }
    std::string cur;
    for (; i < ref.size(); ++i) {
      const char c = ref[i];
      if (c == '.') {
        if (!cur.empty()) target.push_back(cur);
        cur.clear();
      } else if (c == '[') {
        if (!cur.empty()) target.push_back(cur);
        cur.clear();
        const auto e = ref.find(']', i);
        if (e == std::string::npos) err(at, "missing ']' in interpolation '${" + ref + "}'");
        target.push_back(trim(std::string_view(ref).substr(i + 1, e - i - 1)));
        i = e;
      } else {
        cur += c;
      }
    }
    if (!cur.empty()) target.push_back(cur);
    // Walk, resolving intermediate interpolations; report the missing key.
    YAML::Node node;
    try {
      node = resolve_subtree(target);
    } catch (const KeyNotFound& e) {
      // Keep the innermost broken reference: an outer one only says that its target failed.
      if (e.named_reference) throw;
      throw KeyNotFound(ckbridge::detail::concat(file_of(at), ": key '", path_str(at), "': interpolation '${", ref,
                                                 "}': key '", path_str(target), "' not found"), true);
    }
    if (node.IsScalar() && node.Scalar() == "???")
      err(at, "interpolation '${" + ref + "}': '" + path_str(target) + "' is a missing mandatory value (?\?\?)");
    return node;
  }

  YAML::Node root_;
  const LoadOptions& opt_;
  const std::map<std::string, std::string>* origin_;
  std::string file_;
  std::set<std::string> active_, done_, copied_subtrees_;
  std::map<std::string, std::pair<std::string, bool>> failed_;  // key -> (message, was KeyNotFound)
  std::size_t copied_ = 0, built_ = 0;
  mutable std::size_t scanned_ = 0;
  std::vector<std::string> stack_;
};

inline void Composer::read_searchpath(const YAML::Node& hydra, const YAML::Node& doc, const std::string& fname) {
  if (!hydra.IsMap()) return;
  auto sp = child(hydra, "searchpath");
  if (!sp || sp->IsNull()) return;
  if (!sp->IsSequence()) fail(fname, ": key 'hydra.searchpath' must be a list");
  YAML::Node tmp = YAML::Clone(doc);
  for (std::size_t i = 0; i < sp->size(); ++i) {
    const Path key = {"hydra", "searchpath", std::to_string(i)};
    std::string s;
    try {
      Resolver r(tmp, opt_, nullptr, fname);
      const YAML::Node v = r.resolve_subtree(key);
      if (!v.IsScalar()) fail(fname, ": key 'hydra.searchpath[", i, "]' must be a string");
      s = v.Scalar();
    } catch (const Error& e) {
      if (opt_.strict && !opt_.search_ancestors) throw;
      if (opt_.unresolved) opt_.unresolved->push_back(e.what());
      continue;  // the ancestor search usually finds the groups anyway
    }
    if (s.rfind("file://", 0) == 0) s = s.substr(7);
    else if (s.rfind("pkg://", 0) == 0) fail(fname, ": key 'hydra.searchpath[", i, "]': pkg:// search paths are not supported");
    searchpath_.emplace_back(s);
  }
}

}  // namespace detail

// Resolves all interpolations of an in-memory tree in place (no defaults processing).
inline YAML::Node resolve_interpolations(YAML::Node root, const LoadOptions& opt = {}, const std::string& source = "<yaml>") {
  detail::Path at;
  std::size_t visits = 0;
  detail::check_document(root, source, at, visits);
  YAML::Node r = YAML::Clone(root);
  detail::Resolver res(r, opt, nullptr, source);
  res.resolve_all();
  return r;
}

// Loads and composes `file` (see the header comment) and resolves every interpolation.
inline YAML::Node load_yaml(const std::filesystem::path& file, const LoadOptions& opt = {}) {
  if (!detail::regular_file(file)) fail(file.string(), ": config file not found");
  detail::Composer c(opt, file);
  YAML::Node root;
  try {
    root = c.compose(file);
    detail::Resolver res(root, opt, &c.origins(), file.string());
    res.resolve_all();
  } catch (const YAML::Exception& e) {  // safety net: yaml-cpp conversions not checked above
    fail(file.string(), ": ", e.what());
  }
  if (opt.unresolved) {  // the same key may be reported once per reference to it
    std::set<std::string> seen;
    std::vector<std::string> uniq;
    for (auto& m : *opt.unresolved)
      if (seen.insert(m).second) uniq.push_back(m);
    *opt.unresolved = std::move(uniq);
  }
  return root;
}

}  // namespace ckbridge::config
