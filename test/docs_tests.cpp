// SPDX-License-Identifier: MIT
// docs_tests.cpp: README.md, docs/ and gdb/steps.gdb stay true to the code:
// every function they name exists, every link resolves, every output shown is
// a golden file's, every quoted source line is still there, the step table
// and the exit statuses are the program's.
#include <doctest/doctest.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <set>
#include <span>

#include "kvm_hello.hpp"
#include "program/messages.hpp"

namespace kh = kvm_hello;

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

namespace {

const std::filesystem::path source_dir = KVM_HELLO_SOURCE_DIR;  // set by the Makefile

std::string read_source(const std::filesystem::path& relative) {
  std::ifstream file(source_dir / relative);
  REQUIRE_MESSAGE(file.good(), "cannot read " << relative);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

// Whether CODE has NAME( as a whole word, as the regex \bNAME\( would find it: a plain search, since
// building and running a std::regex per name took seconds (minutes under qemu-aarch64).
bool calls_or_defines(std::string_view code, std::string_view name) {
  const std::string call = std::string(name) + "(";
  for (std::size_t at = code.find(call); at != std::string_view::npos; at = code.find(call, at + 1)) {
    const bool word_starts_here =
        at == 0 || !(std::isalnum(static_cast<unsigned char>(code[at - 1])) != 0 || code[at - 1] == '_');
    if (word_starts_here) return true;
  }
  return false;
}

// GitHub's anchor for a heading: lower case, only letters, digits, '_', '-'
// and spaces kept, each space a '-'.
std::string heading_anchor(const std::string& heading) {
  std::string anchor;
  for (const char c : heading) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || c == '_' || c == '-') anchor += static_cast<char>(std::tolower(u));
    if (c == ' ') anchor += '-';
  }
  return anchor;
}

// The anchors of a Markdown file's headings (lines that begin with '#'s and a
// space), as GitHub makes them.
std::set<std::string> heading_anchors(const std::string& text) {
  std::set<std::string> anchors;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    const auto hashes = line.find_first_not_of('#');
    if (hashes != 0 && hashes != std::string::npos && line[hashes] == ' ') {
      anchors.insert(heading_anchor(line.substr(hashes + 1)));
    }
  }
  return anchors;
}

std::vector<std::filesystem::path> markdown_files() {
  std::vector<std::filesystem::path> files{"README.md"};
  for (const auto& entry : std::filesystem::directory_iterator(source_dir / "docs")) {
    if (entry.path().extension() == ".md") files.push_back(std::filesystem::relative(entry.path(), source_dir));
  }
  return files;
}

}  // namespace

TEST_CASE("docs: the steps' table is kvm_hello.hpp's step table: number, function, why (lesson 1's steps)") {
  const std::string tutorial = read_source("docs/README.md");
  std::size_t previous = 0;
  for (const kh::StepInfo& step : std::span(kh::steps).first(std::size_t{kh::lesson1_step_count})) {
    const std::string row =
        "| " + std::to_string(static_cast<int>(step.step)) + " | `" + std::string(step.name) + "()` |";
    const std::size_t at = tutorial.find(row);
    REQUIRE_MESSAGE(at != std::string::npos, "docs/README.md has no row " << row);
    CHECK_MESSAGE(at > previous, step.name << " is out of order");
    const std::string line = tutorial.substr(at, tutorial.find('\n', at) - at);
    CHECK_MESSAGE(line.find("| " + std::string(step.purpose) + " |") != std::string::npos,
                  "the row of " << step.name << " does not say why as the step table does: " << step.purpose);
    previous = at;
  }
}

TEST_CASE("gdb/steps.gdb: a breakpoint on each step function of both lessons, in step order, and nothing else") {
  std::istringstream script(read_source("gdb/steps.gdb"));
  std::vector<std::string> breaks;
  for (std::string line; std::getline(script, line);) {
    if (line.starts_with("break ")) breaks.push_back(line.substr(6));
  }
  REQUIRE(breaks.size() == std::size_t{kh::step_count});
  for (std::size_t i = 0; i < breaks.size(); ++i) CHECK(breaks[i] == "kvm_hello::" + std::string(kh::steps[i].name));
}

TEST_CASE("docs: every `function()` they name exists in the code") {
  std::string code = read_source("kvm_hello.hpp") + read_source("main.cpp");
  for (const char* folder : {"program", "bench"}) {
    for (const auto& entry : std::filesystem::directory_iterator(source_dir / folder)) {
      if (entry.path().extension() == ".hpp") code += read_source(std::filesystem::relative(entry.path(), source_dir));
    }
  }
  const std::regex called("`([A-Za-z_][A-Za-z_0-9]*)\\(\\)`");
  for (const auto& file : markdown_files()) {
    const std::string text = read_source(file);
    for (std::sregex_iterator it(text.begin(), text.end(), called), end; it != end; ++it) {
      const std::string name = (*it)[1];
      CHECK_MESSAGE(calls_or_defines(code, name), file << " names " << name << "(), which the code does not define");
    }
  }
}

TEST_CASE("docs: relative links resolve, and a link to a heading of a Markdown file finds it") {
  const std::regex link("\\]\\(([^)#:]+)(?:#([^)]*))?\\)");
  for (const auto& file : markdown_files()) {
    const std::string text = read_source(file);
    for (std::sregex_iterator it(text.begin(), text.end(), link), end; it != end; ++it) {
      const std::filesystem::path target = source_dir / file.parent_path() / std::string((*it)[1]);
      CHECK_MESSAGE(std::filesystem::exists(target), file << " links to " << (*it)[1] << ", which does not exist");
      if (!(*it)[2].matched || target.extension() != ".md" || !std::filesystem::exists(target)) continue;
      const auto relative = std::filesystem::relative(target, source_dir);
      CHECK_MESSAGE(heading_anchors(read_source(relative)).contains((*it)[2]),
                    file << " links to " << (*it)[1] << "#" << (*it)[2] << ", a heading that file does not have");
    }
  }
}

TEST_CASE("docs: a link's chapter number is its target's, and the path of docs/README.md numbers every chapter") {
  // "[chapter 15](15-without-arm64.md)", "[step 7](07-init-vcpu.md)", "[01](01-open-kvm.md)": the number
  // is the file's. And "- 15: [Running without arm64 hardware](15-without-arm64.md)" in the path.
  const std::regex numbered_link(R"(\[(?:[Cc]hapters? |[Ss]teps? )?([0-9]+)\]\((?:docs/)?([0-9]+)-[^)]*\.md[#)])");
  int links = 0;
  for (const auto& file : markdown_files()) {
    const std::string text = read_source(file);
    for (std::sregex_iterator it(text.begin(), text.end(), numbered_link), end; it != end; ++it, ++links) {
      CHECK_MESSAGE(std::stoi((*it)[1]) == std::stoi((*it)[2]), file << ": " << it->str() << " numbers it wrongly");
    }
  }
  CHECK(links >= 30);
  const std::string tutorial = read_source("docs/README.md");
  const std::regex path_entry(R"(\n *- ([0-9]+): \[[^\]]*\]\((([0-9]+)-[^)]*\.md)\))");
  std::set<int> in_path;
  for (std::sregex_iterator it(tutorial.begin(), tutorial.end(), path_entry), end; it != end; ++it) {
    CHECK_MESSAGE(std::stoi((*it)[1]) == std::stoi((*it)[3]),
                  "docs/README.md's path numbers " << (*it)[2] << " as chapter " << (*it)[1]);
    in_path.insert(std::stoi((*it)[3]));
  }
  // Every chapter that is not a step's (those have the table) has its entry.
  for (const auto& entry : std::filesystem::directory_iterator(source_dir / "docs")) {
    const std::string name = entry.path().filename().string();
    if (name.size() < 3 || !std::isdigit(static_cast<unsigned char>(name[0])) || name[2] != '-') continue;
    const int chapter = std::stoi(name.substr(0, 2));
    if (chapter >= 1 && chapter <= kh::lesson1_step_count) continue;
    CHECK_MESSAGE(in_path.count(chapter) == 1, "docs/README.md's path lacks chapter " << chapter << ", " << name);
  }
}

TEST_CASE("README: the exit status table is the program's") {
  const std::string readme = read_source("README.md");
  for (const StatusInfo& info : status_table) {
    const std::string row =
        "| " + std::to_string(static_cast<int>(info.status)) + " | " + std::string(info.meaning) + " |";
    CHECK_MESSAGE(readme.find(row) != std::string::npos, "README.md lacks the row " << row);
  }
}

namespace {

// Checks that every line of an excerpt of the program's output is real: each
// line is a line of the golden output (test/golden/NAME.txt), or, ending in
// "...", begins one; a line of only "..." stands for lines left out. One
// failure per excerpt, naming the first line that is not. Returns the lines checked.
int check_excerpt(const std::string& excerpt, const std::string& golden_name, const std::string& where) {
  const std::string golden_path = "test/golden/" + golden_name + ".txt";
  const std::string golden = read_source(golden_path);
  std::istringstream lines(excerpt);
  int checked = 0, missing = 0;
  std::string first_missing;
  for (std::string line; std::getline(lines, line);) {
    if (line.find_first_not_of(' ') == line.find("...")) continue;
    const bool shortened = line.ends_with("...");
    const std::string wanted = shortened ? line.substr(0, line.size() - 3) : line + "\n";
    const bool found = golden.find("\n" + wanted) != std::string::npos || golden.starts_with(wanted);
    if (!found && missing++ == 0) first_missing = line;
    ++checked;
  }
  CHECK_MESSAGE(missing == 0, where << ": " << missing << " of the " << checked
                                    << " lines of output it shows are not in " << golden_path << ", the first:\n  "
                                    << first_missing
                                    << "\n  These samples are kvm-hello's real output: when that changes on purpose "
                                       "(`make golden`), copy the new lines from that file.");
  return checked;
}

}  // namespace

TEST_CASE("README: the sample output is the real one (test/golden/default.txt)") {
  const std::string readme = read_source("README.md");
  const std::size_t section = readme.find("## What you will see");
  REQUIRE(section != std::string::npos);
  const std::size_t start = readme.find("```\n", section) + 4;
  const std::size_t end = readme.find("```", start);
  CHECK(check_excerpt(readme.substr(start, end - start), "default", "README.md") > 10);
}

TEST_CASE("docs: every excerpt marked <!-- output: NAME --> is from test/golden/NAME.txt") {
  const std::regex marked("<!-- output: ([a-z0-9-]+) -->\n```\n([^`]*)```");
  int excerpts = 0;
  for (const auto& file : markdown_files()) {
    const std::string text = read_source(file);
    for (std::sregex_iterator it(text.begin(), text.end(), marked), end; it != end; ++it) {
      CHECK(check_excerpt((*it)[2], (*it)[1], file.string()) > 0);
      ++excerpts;
    }
  }
  CHECK(excerpts >= kh::lesson1_step_count);
}

TEST_CASE("docs: one chapter per step of lesson 1, numbered as main.cpp numbers them, titled with its function") {
  for (int n = 1; n <= kh::lesson1_step_count; ++n) {
    const std::string name(kh::step_info(static_cast<kh::Step>(n)).name);
    std::string file_name = name;
    std::replace(file_name.begin(), file_name.end(), '_', '-');
    char prefix[16];
    std::snprintf(prefix, sizeof prefix, "%02d-", n);
    const std::string chapter = "docs/" + std::string(prefix) + file_name + ".md";
    REQUIRE_MESSAGE(std::filesystem::exists(source_dir / chapter), chapter << " is missing");
    const std::string text = read_source(chapter);
    CHECK(text.starts_with("# Step " + std::to_string(n) + ": "));
    CHECK(text.substr(0, text.find('\n')).find("`" + name + "()`") != std::string::npos);
    CHECK_MESSAGE(
        read_source("docs/README.md").find("(" + std::string(prefix) + file_name + ".md)") != std::string::npos,
        "docs/README.md does not link " << chapter);
  }
}

TEST_CASE("README: the table of broken guests is test/guests/, no more, no less") {
  const std::string whole = read_source("README.md");
  const std::size_t start = whole.find("## Run your own guest");
  REQUIRE(start != std::string::npos);
  const std::string readme = whole.substr(start, whole.find("\n## ", start + 1) - start);
  std::set<std::string> in_readme, on_disk;
  const std::regex row("\\n\\| `([a-z0-9_]+\\.S)` \\|");
  for (std::sregex_iterator it(readme.begin(), readme.end(), row), end; it != end; ++it) in_readme.insert((*it)[1]);
  for (const auto& entry : std::filesystem::directory_iterator(source_dir / "test/guests")) {
    on_disk.insert(entry.path().filename().string());
  }
  INFO("README: " << in_readme.size() << " guests, test/guests: " << on_disk.size());
  for (const auto& name : on_disk) CHECK_MESSAGE(in_readme.count(name) == 1, "README.md lacks " << name);
  for (const auto& name : in_readme) CHECK_MESSAGE(on_disk.count(name) == 1, "test/guests lacks " << name);
}

// ==== The benchmark's arithmetic (main.cpp) ===================================

TEST_CASE("docs: every block marked <!-- source: FILE --> is still, line for line, in FILE") {
  const std::regex marked("<!-- source: ([A-Za-z0-9_./-]+) -->\\n```\\n([^`]*)```");
  int blocks = 0;
  for (const auto& file : markdown_files()) {
    const std::string text = read_source(file);
    for (std::sregex_iterator it(text.begin(), text.end(), marked), end; it != end; ++it) {
      const std::string source = "\n" + read_source(std::string((*it)[1]));
      std::istringstream lines((*it)[2]);
      for (std::string line; std::getline(lines, line);) {
        CHECK_MESSAGE(source.find("\n" + line + "\n") != std::string::npos,
                      file << " quotes a line " << (*it)[1] << " does not have: " << line);
      }
      ++blocks;
    }
  }
  CHECK(blocks >= 4);
}

TEST_CASE("kvm_hello.hpp: its table of contents names its banners, in order") {
  const std::string header = read_source("kvm_hello.hpp");
  const std::size_t contents = header.find(" * CONTENTS");
  REQUIRE(contents != std::string::npos);
  std::istringstream lines(header.substr(contents, header.find(" *\n", contents) - contents));
  std::string line;
  std::getline(lines, line);  // the heading
  std::size_t previous = 0, entries = 0;
  for (; std::getline(lines, line); ++entries) {
    // " *   Step 1 ... Step 9      each step's ..." : the entry is what comes before the run of spaces.
    std::string entry = line.substr(5, line.find("  ", 5) - 5);
    std::smatch range;
    if (std::regex_match(entry, range, std::regex(R"(Step (\d+) \.\.\. Step (\d+))"))) {
      CHECK(std::stoi(range[2]) <= kh::step_count);
      for (int n = std::stoi(range[1]); n <= std::stoi(range[2]); ++n) {
        const std::size_t at = header.find("==== Step " + std::to_string(n) + ":", previous);
        CHECK_MESSAGE(at != std::string::npos, "no banner for step " << n << " after the one before");
        previous = at;
      }
      continue;
    }
    const std::size_t at = header.find("==== " + entry, previous);
    CHECK_MESSAGE(at != std::string::npos, "the contents name \"" << entry << "\", but no banner follows with it");
    if (at != std::string::npos) previous = at;
  }
  CHECK(entries >= 8);
}

namespace {

// The project's own code and outputs: where a diagram's names and numbers must come from.
std::string project_text() {
  std::string text = read_source("kvm_hello.hpp") + read_source("main.cpp") + read_source("guest.S") +
                     read_source("lesson2/guest.S") + read_source("lesson3/guest.S");
  for (const char* folder : {"program", "bench", "test/guests", "test/exercises", "test/golden"}) {
    for (const auto& entry : std::filesystem::directory_iterator(source_dir / folder)) {
      text += read_source(std::filesystem::relative(entry.path(), source_dir));
    }
  }
  return text;
}

}  // namespace

TEST_CASE("docs: the diagrams (mermaid) name only what the code has, and there are at least six new ones") {
  const std::string code = project_text();
  const std::regex block("```mermaid\n([^`]*)```");
  const std::regex kvm_name(R"(\b(KVM_[A-Z0-9_]+|PSCI_[A-Z0-9_]+)\b)");
  const std::regex address(R"(\b0x[0-9a-f]{3,}\b)");
  const std::regex function(R"(\b([a-z_][a-z0-9_]*)\(\))");
  int diagrams = 0;
  for (const auto& file : markdown_files()) {
    const std::string text = read_source(file);
    for (std::sregex_iterator it(text.begin(), text.end(), block), end; it != end; ++it, ++diagrams) {
      const std::string diagram = (*it)[1];
      INFO(file << ", diagram:\n" << diagram);
      // Mermaid ends a sequence diagram's message at ';' and drops what follows '#': it would not render.
      if (diagram.starts_with("sequenceDiagram")) {
        std::istringstream lines(diagram);
        for (std::string line; std::getline(lines, line);) {
          CHECK_MESSAGE(line.find_first_of(";#") == std::string::npos, "a ';' or '#' breaks this line: " << line);
        }
      }
      for (std::sregex_iterator n(diagram.begin(), diagram.end(), kvm_name), e; n != e; ++n) {
        CHECK_MESSAGE(code.find((*n)[1]) != std::string::npos, "no code uses " << (*n)[1]);
      }
      // Addresses are the memory map's, or values the program prints.
      for (std::sregex_iterator a(diagram.begin(), diagram.end(), address), e; a != e; ++a) {
        CHECK_MESSAGE(code.find(a->str()) != std::string::npos, "neither the code nor an output has " << a->str());
      }
      // A function is the project's, or one of the kernel's the chapter names in its text.
      for (std::sregex_iterator f(diagram.begin(), diagram.end(), function), e; f != e; ++f) {
        const std::string name = (*f)[1];
        const bool ours = calls_or_defines(code, name);
        const bool cited = text.find("`" + name + "`") != std::string::npos;
        CHECK_MESSAGE((ours || cited), name << "() is neither in the code nor named in the text of " << file);
      }
    }
  }
  CHECK(diagrams >= 15);  // the overview's three, six on lesson 1's mechanism, three on lesson 2's, three on lesson 3's
}

TEST_CASE("docs: the host's answer is KVM_HELLO_HOST_ANSWER wherever they give its value") {
  const std::regex named(R"(KVM_HELLO_HOST_ANSWER`? \((0x[0-9a-f]+)\))");
  int mentions = 0;
  for (const auto& file : markdown_files()) {
    const std::string text = read_source(file);
    for (std::sregex_iterator it(text.begin(), text.end(), named), end; it != end; ++it, ++mentions) {
      CHECK_MESSAGE(std::stoul((*it)[1], nullptr, 16) == kh::host_answer, file << " gives " << (*it)[1]);
    }
  }
  CHECK(mentions >= 1);
}

// ==== Lesson 2 ================================================================

namespace {


}  // namespace

TEST_CASE("docs: each step of lessons 2 and 3 has its section, titled as the step table titles it, where the table links") {
  const std::string tutorial = read_source("docs/README.md");
  for (int n = kh::lesson1_step_count + 1; n <= kh::lesson2_step_count; ++n) {
    const kh::StepInfo& step = kh::step_info(static_cast<kh::Step>(n));
    INFO("step " << n << ", " << step.name);
    const std::string row = "| " + std::to_string(n) + " | `" + std::string(step.name) + "()` |";
    const std::size_t at = tutorial.find(row);
    REQUIRE_MESSAGE(at != std::string::npos, "docs/README.md has no row " << row);
    const std::string line = tutorial.substr(at, tutorial.find('\n', at) - at);
    CHECK_MESSAGE(line.find("| " + std::string(step.purpose) + " |") != std::string::npos,
                  "the row of " << step.name << " does not say why as the step table does: " << step.purpose);
    std::smatch link;
    REQUIRE_MESSAGE(std::regex_search(line, link, std::regex(R"(\]\(([0-9]+-[a-z0-9-]+\.md)#([a-z0-9_-]+)\) \|$)")),
                    "the row of step " << n << " links no chapter's section: " << line);
    const std::string heading =
        "## Step " + std::to_string(n) + ": " + std::string(step.title) + ": `" + std::string(step.name) + "()`";
    const std::string chapter = read_source("docs/" + std::string(link[1]));
    CHECK_MESSAGE(chapter.find("\n" + heading + "\n") != std::string::npos,
                  "docs/" << link[1] << " has no heading " << heading);
    CHECK_MESSAGE(link[2] == heading_anchor(heading.substr(3)),
                  "the link's anchor is " << link[2] << ", the heading's " << heading_anchor(heading.substr(3)));
  }
}

TEST_CASE("docs: every KVM_IRQ_LINE encoding they give is irq_line_spi()'s or irq_line_ppi()'s") {
  const auto number = [](const std::string& text, int base = 10) {
    return static_cast<std::uint32_t>(std::stoul(text, nullptr, base));
  };
  const std::regex spi(R"(`irq_line_spi\(([0-9]+)\)` = (0x[0-9a-f]+))");
  const std::regex ppi(R"(`irq_line_ppi\(([0-9]+), ([0-9]+)\)` = (0x[0-9a-f]+))");
  int examples = 0;
  for (const auto& file : markdown_files()) {
    const std::string text = read_source(file);
    for (std::sregex_iterator it(text.begin(), text.end(), spi), end; it != end; ++it, ++examples) {
      CHECK_MESSAGE(number((*it)[2], 16) == kh::irq_line_spi(number((*it)[1])),
                    file << ": " << it->str());
    }
    for (std::sregex_iterator it(text.begin(), text.end(), ppi), end; it != end; ++it, ++examples) {
      CHECK_MESSAGE(number((*it)[3], 16) == kh::irq_line_ppi(number((*it)[1]), number((*it)[2])),
                    file << ": " << it->str());
    }
  }
  CHECK(examples >= 2);
}

TEST_CASE("docs: the order table gives the errnos the header's order rules give, and no other") {
  const std::string header = read_source("kvm_hello.hpp");
  const std::size_t part2 = header.find("The order rules");
  REQUIRE(part2 != std::string::npos);
  const std::string rules = header.substr(part2, header.find("\n\n", part2) - part2);
  const std::string chapter = read_source("docs/25-the-order-of-the-ioctls.md");
  const std::size_t start = chapter.find("| the rule |");
  REQUIRE(start != std::string::npos);
  const std::string table = chapter.substr(start, chapter.find("\n\n", start) - start);
  const std::string part2_text = header.substr(header.find("==== Part II"));
  const std::regex errno_name(R"(\b(EBUSY|EEXIST|EINVAL|E2BIG|ENXIO|EIO|EAGAIN|ENODEV|EFAULT|EPERM|ENOEXEC|ENOMEM)\b)");
  std::set<std::string> in_rules, in_table;
  for (std::sregex_iterator it(rules.begin(), rules.end(), errno_name), end; it != end; ++it) in_rules.insert((*it)[1]);
  for (std::sregex_iterator it(table.begin(), table.end(), errno_name), end; it != end; ++it) in_table.insert((*it)[1]);
  CHECK(in_rules.size() >= 4);
  for (const auto& e : in_rules) CHECK_MESSAGE(in_table.count(e) == 1, "the order table lacks " << e);
  // Every errno of the table is one the header's Part II says a step can get.
  for (const auto& e : in_table) CHECK_MESSAGE(part2_text.find(e) != std::string::npos, "Part II never names " << e);
}

// ==== Lesson 3 ================================================================

TEST_CASE("docs: every MPIDR, ICC_SGI1R_EL1 or GICD_SGIR value they give is mpidr_affinity()'s, icc_sgi1r()'s or gicd_sgir()'s") {
  const auto number = [](const std::string& text) { return std::stoull(text, nullptr, 0); };
  const std::regex affinity(R"(`mpidr_affinity\(([0-9]+)\)` = (0x[0-9a-f]+))");
  const std::regex sgi1r(R"(`icc_sgi1r\(([0-9]+), (0x[0-9a-f]+)\)` = (0x[0-9a-f]+))");
  const std::regex sgir(R"(`gicd_sgir\(([0-9]+), ([0-9]+)\)` = (0x[0-9a-f]+))");
  int examples = 0;
  for (const auto& file : markdown_files()) {
    const std::string text = read_source(file);
    for (std::sregex_iterator it(text.begin(), text.end(), affinity), end; it != end; ++it, ++examples) {
      CHECK_MESSAGE(number((*it)[2]) == kh::mpidr_affinity(static_cast<std::uint32_t>(number((*it)[1]))),
                    file << ": " << it->str());
    }
    for (std::sregex_iterator it(text.begin(), text.end(), sgi1r), end; it != end; ++it, ++examples) {
      CHECK_MESSAGE(number((*it)[3]) == kh::icc_sgi1r(static_cast<std::uint32_t>(number((*it)[1])), number((*it)[2])),
                    file << ": " << it->str());
    }
    for (std::sregex_iterator it(text.begin(), text.end(), sgir), end; it != end; ++it, ++examples) {
      CHECK_MESSAGE(number((*it)[3]) == kh::gicd_sgir(static_cast<std::uint32_t>(number((*it)[1])),
                                                      static_cast<std::uint32_t>(number((*it)[2]))),
                    file << ": " << it->str());
    }
  }
  CHECK(examples >= 6);
}
