// Chat templates: every rendered conversation of the DeepSeek-V3 and DeepSeek-R1 fixtures (made
// by Python's Jinja2 as transformers configures it), R1-format conversations beyond them, and
// unit tests of the Jinja interpreter. The interpreter's expected strings follow Jinja2 3.1's
// documented behaviour and were checked against Jinja2 3.1.6 (ImmutableSandboxedEnvironment,
// trim_blocks, lstrip_blocks, loopcontrols, transformers' tojson and raise_exception).
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "text/chat_template.h"
#include "text/jinja/jinja.h"
#include "text/tokenizer/tokenizer.h"

namespace {

using nlohmann::json;
using shoal::ChatRequest;
using shoal::Code;
using shoal::render_chat;
using shoal::template_renders_tools;
using shoal::jinja::Template;
namespace fs = std::filesystem;

const fs::path kFixtures = SHOAL_FIXTURES;
const std::string kBos = "<｜begin▁of▁sentence｜>";
const std::string kEos = "<｜end▁of▁sentence｜>";

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  REQUIRE(in);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<json> read_jsonl(const fs::path& p) {
  std::ifstream in(p);
  REQUIRE(in);
  std::vector<json> lines;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) lines.push_back(json::parse(line));
  }
  return lines;
}

std::string config_template(const fs::path& dir) {
  return json::parse(read_file(dir / "tokenizer_config.json")).at("chat_template").get<std::string>();
}

// Renders `src` with `context`, requiring success.
std::string render(const std::string& src, const json& context = json::object()) {
  auto t = Template::parse(src);
  INFO(src);
  REQUIRE(t.status().message() == "");
  auto out = t->render(context);
  REQUIRE(out.status().message() == "");
  return *out;
}

// The error of parsing or rendering `src`, requiring one.
shoal::Status render_error(const std::string& src, const json& context = json::object()) {
  auto t = Template::parse(src);
  if (!t.ok()) return t.status();
  auto out = t->render(context);
  INFO(src << " rendered " << (out.ok() ? *out : ""));
  REQUIRE_FALSE(out.ok());
  return out.status();
}

std::string chat(const std::string& tmpl, const json& messages, bool add_generation_prompt = true) {
  ChatRequest req;
  req.messages = messages;
  req.add_generation_prompt = add_generation_prompt;
  auto out = render_chat(tmpl, req, kBos, kEos);
  REQUIRE(out.status().message() == "");
  return *out;
}

void check_fixture_set(const fs::path& dir, size_t expected_cases) {
  std::string tmpl = config_template(dir);
  std::vector<json> cases = read_jsonl(dir / "chat.jsonl");
  REQUIRE(cases.size() == expected_cases);
  for (size_t i = 0; i < cases.size(); ++i) {
    INFO(dir.filename().string() << "/chat.jsonl line " << i + 1);
    CHECK(chat(tmpl, cases[i].at("messages"), cases[i].at("add_generation_prompt").get<bool>()) ==
          cases[i].at("rendered").get<std::string>());
  }
}

}  // namespace

// ---- fixtures: rendered by Python's Jinja2 --------------------------------------------------

TEST_CASE("DeepSeek-V3 template renders every fixture conversation byte for byte", "[chat][fixtures]") {
  check_fixture_set(kFixtures / "tokenizer-deepseek-v3", 20);
}

TEST_CASE("DeepSeek-R1 template renders every fixture conversation byte for byte", "[chat][fixtures]") {
  fs::path dir = kFixtures / "chat-template-deepseek-r1";
  CHECK(config_template(dir) == read_file(dir / "chat_template.jinja"));
  check_fixture_set(dir, 24);
}

TEST_CASE("render_chat with a tokenizer uses its template and special tokens", "[chat][tokenizer]") {
  auto tok = shoal::Tokenizer::load(kFixtures / "tokenizer-deepseek-v3");
  REQUIRE(tok.status().message() == "");
  ChatRequest req;
  req.messages = json::array({{{"role", "user"}, {"content", "Hello!"}}});
  auto out = render_chat(**tok, req);
  REQUIRE(out.ok());
  CHECK(*out == kBos + "<｜User｜>Hello!<｜Assistant｜>");
}

// ---- R1 format beyond the fixtures: from DeepSeek's published R1 chat format ---------------

TEST_CASE("R1 format: earlier reasoning is dropped, the prompt opens a think block", "[chat][r1]") {
  const std::string r1 = read_file(kFixtures / "chat-template-deepseek-r1" / "chat_template.jinja");
  const std::string U = "<｜User｜>", A = "<｜Assistant｜>";

  SECTION("a first turn ends with the assistant tag and an open <think>") {
    CHECK(chat(r1, json::array({{{"role", "user"}, {"content", "1+1?"}}})) == kBos + U + "1+1?" + A + "<think>\n");
  }
  SECTION("an earlier assistant turn keeps only what follows </think>") {
    json msgs = json::array({{{"role", "system"}, {"content", "Be brief."}},
                             {{"role", "user"}, {"content", "1+1?"}},
                             {{"role", "assistant"}, {"content", "<think>\nadd them\n</think>\n\n2"}},
                             {{"role", "user"}, {"content", "and 2+2?"}}});
    CHECK(chat(r1, msgs) == kBos + "Be brief." + U + "1+1?" + A + "\n\n2" + kEos + U + "and 2+2?" + A + "<think>\n");
  }
  SECTION("text after the last of several </think> survives; turns without one are untouched") {
    json msgs = json::array({{{"role", "user"}, {"content", "q"}},
                             {{"role", "assistant"}, {"content", "a</think>b</think>final"}},
                             {{"role", "user"}, {"content", "q2"}},
                             {{"role", "assistant"}, {"content", "plain answer"}}});
    CHECK(chat(r1, msgs, false) == kBos + U + "q" + A + "final" + kEos + U + "q2" + A + "plain answer" + kEos);
  }
  SECTION("reasoning in a user message is not touched") {
    json msgs = json::array({{{"role", "user"}, {"content", "<think>x</think>y"}}});
    CHECK(chat(r1, msgs, false) == kBos + U + "<think>x</think>y");
  }
  SECTION("only the last system message is kept (V3 joins them all)") {
    json msgs = json::array({{{"role", "system"}, {"content", "one"}},
                             {{"role", "user"}, {"content", "q"}},
                             {{"role", "system"}, {"content", "two"}}});
    CHECK(chat(r1, msgs) == kBos + "two" + U + "q" + A + "<think>\n");
    std::string v3 = config_template(kFixtures / "tokenizer-deepseek-v3");
    CHECK(chat(v3, msgs) == kBos + "one\n\ntwo" + U + "q" + A);
  }
  SECTION("after tool outputs there is no generation prompt, only the outputs' end") {
    json call = {{"type", "function"}, {"function", {{"name", "f"}, {"arguments", "{}"}}}};
    json msgs = json::array({{{"role", "user"}, {"content", "q"}},
                             {{"role", "assistant"}, {"content", nullptr}, {"tool_calls", json::array({call})}},
                             {{"role", "tool"}, {"content", "42"}}});
    CHECK(chat(r1, msgs) == kBos + U + "q" + A +
                                "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{}\n```"
                                "<｜tool▁call▁end｜><｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>42"
                                "<｜tool▁output▁end｜><｜tool▁outputs▁end｜>");
  }
}

// ---- render_chat's checks -------------------------------------------------------------------

TEST_CASE("render_chat rejects malformed messages, naming the message", "[chat][errors]") {
  const std::string tmpl = "{% for m in messages %}{{ m.role }}{% endfor %}";
  auto error = [&](const json& messages) {
    ChatRequest req;
    req.messages = messages;
    auto out = render_chat(tmpl, req, kBos, kEos);
    REQUIRE_FALSE(out.ok());
    CHECK(out.status().code() == Code::kInvalidArgument);
    return out.status().message();
  };
  CHECK(error(json::object({{"role", "user"}})) == "chat messages must be an array, not object");
  CHECK(error(json::array({"hello"})) == "chat message 0 must be an object, not string");
  CHECK(error(json::array({{{"role", "user"}}, {{"content", "x"}}})) == "chat message 1 has no \"role\"");
  CHECK(error(json::array({{{"role", 3}}})) == "chat message 0: \"role\" must be a string, not number");
  CHECK(chat(tmpl, json::array()) == "");
}

TEST_CASE("tools reach the template in the client's key order, as Jinja2 renders them", "[chat][fixtures][tools]") {
  const fs::path dir = kFixtures / "chat-template-tools";
  const std::string tmpl = read_file(dir / "chat_template.jinja");
  std::ifstream in(dir / "chat.jsonl");
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    INFO("chat-template-tools/chat.jsonl line " << n + 1);
    const nlohmann::ordered_json c = nlohmann::ordered_json::parse(line);
    ChatRequest req;
    req.messages = json::parse(c["messages"].dump());
    req.tools = c["tools"];
    req.add_generation_prompt = c["add_generation_prompt"];
    auto out = render_chat(tmpl, req, kBos, kEos);
    REQUIRE(out.status().message() == "");
    CHECK(*out == c["rendered"].get<std::string>());
    ++n;
  }
  CHECK(n == 16);
  // Which templates can show the model its tools: this one; DeepSeek-V3's and R1's own cannot.
  CHECK(template_renders_tools(tmpl));
  CHECK_FALSE(template_renders_tools(read_file(kFixtures / "chat-template-deepseek-r1" / "chat_template.jinja")));
  CHECK_FALSE(template_renders_tools(config_template(kFixtures / "tokenizer-deepseek-v3")));
  CHECK(template_renders_tools("{% for t in tools %}{{ t }}{% endfor %}"));
  CHECK(template_renders_tools("{%- if tools -%}x{%- endif %}"));
  CHECK_FALSE(template_renders_tools("{{ message['tool_calls'] }}{{ is_tools }}{{ 'tools' }}{{ x.tools }}"));
}

TEST_CASE("render_chat passes tools and documents as None, as transformers does", "[chat]") {
  CHECK(chat("{{ tools is none }} {{ documents is none }} {{ pad_token == eos_token }}", json::array()) ==
        "True True True");
}

// ---- the interpreter ------------------------------------------------------------------------

TEST_CASE("whitespace control: trim_blocks, lstrip_blocks, - and + modifiers", "[jinja][whitespace]") {
  // trim_blocks drops the newline after a block tag; lstrip_blocks the indent before it.
  CHECK(render("  {% if true %}\n  x\n  {% endif %}\nend") == "  x\nend");
  CHECK(render("a  {% if true %}b{% endif %}") == "a  b");  // not at a line start: kept
  CHECK(render("a\n  {%+ if true %}b{% endif %}") == "a\n  b");
  CHECK(render("a\n  {% if true +%}\nb{% endif %}") == "a\n\nb");
  // Comments behave like blocks; "-" strips all whitespace, newlines included.
  CHECK(render("a\n  {# c #}\nb") == "a\nb");
  CHECK(render("a\n  {#- c -#}\n  b") == "ab");
  CHECK(render("a {{- 'x' -}} \n b") == "axb");
  // Variables are neither lstripped nor trimmed.
  CHECK(render("a\n  {{ 'x' }}\n  b") == "a\n  x\n  b");
  CHECK(render("{%- set x = 'a' -%}\n\n  {{ x }}  \n\n{%- if x -%}\n  b  \n{%- endif -%}\n  c") == "abc");
  CHECK(render("  {% for x in [1,2] %}\n    {{ x }}\n  {% endfor %}\n") == "    1\n    2\n");
  // Both "-" and lstrip_blocks strip Unicode whitespace too (Python's \s), not only " \t".
  CHECK(render("a \xE3\x80\x80\n{%- if true %}b{% endif %}") == "ab");
  CHECK(render("a\n\xC2\xA0{% if true %}b{% endif %}") == "a\nb");
  CHECK(render("a\n\xC2\xA0x {% if true %}b{% endif %}") == "a\n\xC2\xA0x b");
  // One trailing newline of the template is dropped; \r\n is read as \n.
  CHECK(render("{{ 1 }}\n\n") == "1\n");
  CHECK(render("{% if true %}\r\nb\r\n{% endif %}\r\n") == "b\n");
  // {% raw %}: no trim after the opening tag, trim after the closing one.
  CHECK(render("x\n{% raw %}\n{{ y }}{% endraw %}\nz") == "x\n\n{{ y }}z");
  CHECK(render("x {%- raw -%}  {{ a }}  {%- endraw -%}  y") == "x{{ a }}y");
}

TEST_CASE("loops: loop variables, else, filters, break and continue, unpacking", "[jinja][for]") {
  CHECK(render("{% for i in [1,2,3] %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}"
               "{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }}|{% endfor %}") ==
        "10TrueFalse332|21FalseFalse321|32FalseTrue310|");
  CHECK(render("{% for i in 'ab' %}{{ loop.previtem }}{{ loop.nextitem }}{{ loop.cycle('x', 'y') }}{% endfor %}") ==
        "bxay");
  CHECK(render("{% for i in [1,2,3,4] if i is odd %}{{ loop.index }}/{{ loop.length }}:{{ i }} {% endfor %}") ==
        "1/2:1 2/2:3 ");
  CHECK(render("{% for i in [] %}a{% else %}empty{% endfor %}") == "empty");
  CHECK(render("{% for i in [1, 2] if i > 5 %}a{% else %}none{% endfor %}") == "none");
  CHECK(render("{% for i in [1,2,3,4] %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 4 %}{% break %}"
               "{% endif %}{{ i }}{% endfor %}") == "13");
  CHECK(render("{% for i in [1,2] %}{% for j in [3,4] %}{% if j == 4 %}{% break %}{% endif %}{{ i }}{{ j }}"
               "{% endfor %}{% endfor %}") == "1323");
  CHECK(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}") == "a=1;b=2;");
  CHECK(render("{% for a, b in [[1, 2], [3, 4]] %}{{ a }}{{ b }}{% endfor %}") == "1234");
  CHECK(render("{% for k in d %}{{ k }}{% endfor %}{% for c in 'héj' %}[{{ c }}]{% endfor %}",
               {{"d", {{"x", 1}, {"y", 2}}}}) == "xy[h][é][j]");
}

TEST_CASE("scoping: loop bodies do not leak, namespace() carries state out", "[jinja][scope]") {
  CHECK(render("{% set x = 1 %}{% for i in [1,2] %}{{ x }}{% set x = i * 10 %}{{ x }}{% endfor %}{{ x }}") ==
        "1101201");
  CHECK(render("{% for i in [1,2] %}{% endfor %}{{ i }}|{% if true %}{% set z = 3 %}{% endif %}{{ z }}") == "|3");
  CHECK(render("{% set ns = namespace(a=1, s='') %}{% for i in [1,2] %}{% set ns.a = ns.a + i %}"
               "{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.a }} {{ ns.s }} {{ ns }}") ==
        "4 12 <Namespace {'a': 4, 's': '12'}>");
  CHECK(render("{% set a, b = [1, 2] %}{{ a }}{{ b }}{% set c = 1, 2 %}{{ c }}") == "12(1, 2)");
  CHECK(render("{% set x %}hi {{ 1 }}{% endset %}[{{ x }}]{% set y | upper %}b{% endset %}{{ y }}") == "[hi 1]B");
  CHECK(render("{% with a = 1 %}{{ a }}{% endwith %}[{{ a }}]") == "1[]");
  CHECK(render("{% macro m(a, b=2) %}{{ a }}{{ b }}{{ x }}{% endmacro %}{% set x = 'X' %}{{ m(1) }}|{{ m(1, b=3) }}") ==
        "12X|13X");
}

TEST_CASE("expressions: arithmetic, comparison, logic, tests", "[jinja][expr]") {
  CHECK(render("{{ 7/2 }} {{ 4/2 }} {{ -7//2 }} {{ -7 % 3 }} {{ 2**10 }} {{ 2**3**2 }} {{ 1 + true }} {{ 0.1 + 0.2 }}") ==
        "3.5 2.0 -4 2 1024 64 2 0.30000000000000004");
  CHECK(render("{{ 1e16 }} {{ 1e15 }} {{ 1e-5 }} {{ 'a' * 3 }} {{ [1] * 2 }} {{ 'a' ~ 1 ~ none ~ true }}") ==
        "1e+16 1000000000000000.0 1e-05 aaa [1, 1] a1NoneTrue");
  CHECK(render("{{ 1 == 1.0 }}{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}{{ 'a' in 'cat' }}{{ 3 not in [1, 2] }}"
               "{{ 'k' in {'k': 1} }}") == "TrueTrueFalseTrueTrueTrue");
  CHECK(render("{{ [] or 'empty' }}{{ 0 and 1 }}{{ 'x' if 0 else 'y' }}{{ not none }}{{ (1, 2) == [1, 2] }}") ==
        "empty0yTrueFalse");
  CHECK(render("{{ [1, 'a', none, true, 1.5, {'k': \"it's\"}] }}") == "[1, 'a', None, True, 1.5, {'k': \"it's\"}]");
  CHECK(render("{{ x is none }}{{ y is string }}{{ y is not number }}{{ z is mapping }}{{ w is sequence }}"
               "{{ x is defined }}{{ q is undefined }}{{ true is boolean }}{{ 4 is even }}{{ 9 is divisibleby 3 }}",
               {{"x", nullptr}, {"y", "s"}, {"z", json::object()}, {"w", json::array()}}) ==
        "TrueTrueTrueTrueTrueTrueTrueTrueTrueTrue");
  CHECK(render("{{ 'a' if x is defined and x else 'b' }}", {{"x", json::array({0})}}) == "a");
}

TEST_CASE("attribute, item and slice access, with code point indexing", "[jinja][access]") {
  json ctx = {{"m", {{"role", "user"}, {"items", 3}, {"nested", {{"k", "v"}}}}}, {"s", "héllo wörld"}};
  CHECK(render("{{ m.role }}{{ m['role'] }}{{ m.nested.k }}{{ m['items'] }}{{ m.get('none', 7) }}{{ m.get('x') }}",
               ctx) == "useruserv37None");
  CHECK(render("{{ s[1] }}{{ s[-1] }}{{ s[1:3] }}{{ s[::-1] }}{{ s[:-6] }}{{ s[99:] }}|{{ s|length }}", ctx) ==
        "édéldlröw olléhhéllo|11");
  CHECK(render("{{ [1,2,3,4][-3:-1] }}{{ [1,2,3][::-1] }}{{ [1,2].0 }}{{ [1][5] }}|") == "[2, 3][3, 2, 1]1|");
  CHECK(render("{{ m.missing }}|{{ m.missing is defined }}|{{ none.x }}|", ctx) == "|False||");
  CHECK(render("{{ (m.keys()|list)[0] }} {{ m.values()|list|length }}", ctx) == "items 3");
}

TEST_CASE("undefined values behave like Jinja2's default Undefined", "[jinja][undefined]") {
  CHECK(render("[{{ foo }}][{{ foo|length }}][{{ foo|first }}][{{ foo|join(',') }}][{{ foo ~ 'x' }}]"
               "[{{ foo|default('d') }}][{{ foo|upper }}][{{ foo|list }}]") == "[][0][][][x][d][][[]]");
  CHECK(render("{% for x in foo %}a{% else %}b{% endfor %}{% if not foo %}c{% endif %}{{ foo == foo }}"
               "{{ 'a' in foo }}") == "bcTrueFalse");
  CHECK(render_error("{{ foo.bar }}").message() == "chat template line 1: 'foo' is undefined");
  CHECK(render_error("{{ foo.split('a') }}").message() == "chat template line 1: 'foo' is undefined");
  CHECK(render_error("\n{{ foo + 'x' }}").message() == "chat template line 2: 'foo' is undefined");
  CHECK(render_error("{{ d.a.b }}", {{"d", json::object()}}).message() ==
        "chat template line 1: 'dict object' has no attribute 'a'");
  CHECK(render_error("{{ foo|tojson }}").message() ==
        "chat template line 1: Object of type Undefined is not JSON serializable");
}

TEST_CASE("generator filters are one-pass iterators, dict views and ranges print as Python's", "[jinja][lazy]") {
  CHECK(render("{% if [] | select %}yes{% endif %}|{% if [] | select | list %}no{% endif %}") == "yes|");
  CHECK(render_error("{{ [1, 2]|select|length }}").message() ==
        "chat template line 1: object of type 'generator' has no len()");
  CHECK(render("{% set g = [1, 2, 3]|select %}{{ g|first }}{{ g|list }}{{ g|list }}") == "1[2, 3][]");
  CHECK(render("{% set n = users|map(attribute='name') %}{{ n|join(',') }}|{{ n|join(',') }}",
               {{"users", {{{"name", "a"}}, {{"name", "b"}}}}}) == "a,b|");
  CHECK(render("{{ {'a': 1}.items() }} {{ range(3) }} {{ range(1, 9, 2) }} {{ {'a': 1}.keys()|length }}") ==
        "dict_items([('a', 1)]) range(0, 3) range(1, 9, 2) 1");
  CHECK(render("{% for x in range(3)|reverse %}{{ x }}{% endfor %}{{ range(5)[1] }}{{ {'a': 1}.values()|first }}") ==
        "21011");
  CHECK(render_error("{{ {'a': 1}.items()|tojson }}").message() ==
        "chat template line 1: Object of type dict_items is not JSON serializable");
}

TEST_CASE("string methods as Python has them", "[jinja][str]") {
  CHECK(render("{{ 'A B  c'.split() }}{{ 'a,b,,c'.split(',') }}{{ 'a,b,c'.split(',', 1) }}"
               "{{ 'a,b,c'.rsplit(',', 1) }}{{ '  a  b  '.split(none, 1) }}") ==
        "['A', 'B', 'c']['a', 'b', '', 'c']['a', 'b,c']['a,b', 'c']['a', 'b  ']");
  CHECK(render("[{{ '  x  '.strip() }}][{{ 'xxhixx'.strip('x') }}][{{ '  x '.lstrip() }}][{{ 'x\\n\\n'.rstrip() }}]"
               "[{{ 'ab'.rstrip('b') }}]") == "[x][hi][x ][x][a]");
  CHECK(render("{{ 'Hello'.startswith('He') }}{{ 'Ab'.startswith(('a', 'A')) }}{{ 'abc'.endswith('bc') }}"
               "{{ 'a.b'.replace('.', '-') }}{{ 'Hi'.lower() }}{{ 'straße'.upper() }}{{ 'héX'.find('X') }}") ==
        "TrueTrueTruea-bhiSTRASSE2");
  CHECK(render("{{ 'hello world'.title() }}|{{ '-'.join(['a', 'b']) }}|{{ '{}-{x}'.format(1, x=2) }}|"
               "{{ 'ab'.center(6, '*') }}") == "Hello World|a-b|1-2|**ab**");
  CHECK(render("{{ c.split('</think>')[-1] }}|{{ 'no think'.split('</think>')[-1] }}",
               {{"c", "<think>\nr\n</think>\n\nanswer"}}) == "\n\nanswer|no think");
}

TEST_CASE("filters", "[jinja][filters]") {
  CHECK(render("{{ 'x'|length }}{{ [1, 2]|count }}{{ ' a '|trim }}{{ 'xax'|trim('x') }}{{ 'Ab'|lower }}"
               "{{ 'ab'|upper }}{{ 'hELLO wORLD'|capitalize }}{{ \"it's x-ray\"|title }}") ==
        "12aaabABHello worldIt's X-Ray");
  CHECK(render("{{ none|default('d') }}{{ ''|default('d') }}{{ ''|default('d', true) }}{{ u|d('z') }}") == "Nonedz");
  CHECK(render("{{ [3, 1, 2]|first }}{{ [3, 1, 2]|last }}{{ 'abc'|first }}{{ [1, 2]|join('-') }}"
               "{{ 'abc'|list }}{{ 5|string ~ 'x' }}{{ '42.7'|int }}{{ 'x'|int(3) }}{{ '1e3'|float }}") ==
        "32a1-2['a', 'b', 'c']5x4231000.0");
  CHECK(render("{{ 'a-b'|replace('-', '+') }}{{ 'abc'|reverse }}{{ [1, 2]|reverse|list }}{{ '<b>'|safe }}"
               "{{ '<b>'|e }}") == "a+bcba[2, 1]<b>&lt;b&gt;");
  json users = {{"users", {{{"name", "a"}, {"role", "user"}}, {{"name", "b"}, {"role", "assistant"}}, {{"x", 1}}}}};
  CHECK(render("{{ users|selectattr('role', 'equalto', 'user')|map(attribute='name')|list }}"
               "{{ users|rejectattr('name', 'defined')|list }}{{ users|selectattr('name')|list|length }}"
               "{{ ['a', 'b']|map('upper')|join }}{{ [1, 2, 3, 4]|select('odd')|list }}{{ [1, 2, 3]|reject('odd')|list }}",
               users) == "['a'][{'x': 1}]2AB[1, 3][2]");
  CHECK(render("{{ [3, 1, 2]|sort }}{{ ['b', 'A', 'a']|sort }}{{ ['b', 'A', 'a']|unique|list }}{{ {'b': 1, 'a': 2}|dictsort }}"
               "{{ [1, 2, 3]|sum }}{{ [1, 5, 3]|max }}{{ 2.5|round }}{{ 3.14159|round(2) }}{{ -3|abs }}") ==
        "[1, 2, 3]['A', 'a', 'b']['b', 'A'][('a', 2), ('b', 1)]652.03.143");
  CHECK(render("{{ 'a\\nb\\n\\nc'|indent(2) }}|{{ 'a\\nb'|indent(2, true) }}|{{ '%s=%d'|format('x', 3) }}") ==
        "a\n  b\n\n  c|  a\n  b|x=3");
  CHECK(render("{% filter upper %}hi {{ 'x' }}{% endfilter %}") == "HI X");
}

TEST_CASE("tojson: transformers' filter, json.dumps byte for byte", "[jinja][tojson]") {
  nlohmann::ordered_json tool = nlohmann::ordered_json::parse(
      R"({"name": "météo", "parameters": {"type": "object", "required": ["city"], "n": 1.5, "ok": true, "z": null}})");
  auto t = Template::parse("{{ tool|tojson }}\n{{ tool|tojson(indent=2) }}\n{{ tool|tojson(sort_keys=true) }}");
  REQUIRE(t.ok());
  auto out = t->render(nlohmann::ordered_json{{"tool", tool}});
  REQUIRE(out.ok());
  CHECK(*out ==
        "{\"name\": \"météo\", \"parameters\": {\"type\": \"object\", \"required\": [\"city\"], \"n\": 1.5, "
        "\"ok\": true, \"z\": null}}\n"
        "{\n  \"name\": \"météo\",\n  \"parameters\": {\n    \"type\": \"object\",\n    \"required\": [\n"
        "      \"city\"\n    ],\n    \"n\": 1.5,\n    \"ok\": true,\n    \"z\": null\n  }\n}\n"
        "{\"name\": \"météo\", \"parameters\": {\"n\": 1.5, \"ok\": true, \"required\": [\"city\"], "
        "\"type\": \"object\", \"z\": null}}");
  CHECK(render("{{ s|tojson }}{{ s|tojson(ensure_ascii=true) }}", {{"s", "é😀\t\"\\\x01"}}) ==
        "\"é😀\\t\\\"\\\\\\u0001\"\"\\u00e9\\ud83d\\ude00\\t\\\"\\\\\\u0001\"");
  CHECK(render("{{ [1, [2, {}], []]|tojson(separators=(',', ':')) }}{{ 1.0|tojson }}{{ {'a': []}|tojson(indent=1) }}") ==
        "[1,[2,{}],[]]1.0{\n \"a\": []\n}");
}

TEST_CASE("raise_exception and runtime errors name the template line", "[jinja][errors]") {
  auto st = render_error("{% for m in messages %}\n{% if m.role != 'user' %}\n"
                         "{{ raise_exception('Conversation roles must alternate') }}\n{% endif %}\n{% endfor %}",
                         {{"messages", {{{"role", "user"}}, {{"role", "bot"}}}}});
  CHECK(st.code() == Code::kInvalidArgument);
  CHECK(st.message() == "chat template line 3: Conversation roles must alternate");
  CHECK(render_error("{{ 'a' + 1 }}").message() ==
        "chat template line 1: can only concatenate str (not \"int\") to str");
  CHECK(render_error("{{ 1 / 0 }}").message() == "chat template line 1: division by zero");
  CHECK(render_error("{{ [1].append(2) }}").message() ==
        "chat template line 1: access to attribute 'append' of 'list' object is unsafe");
  CHECK(render_error("{% set x = 1 %}{% set x.y = 2 %}").message() ==
        "chat template line 1: cannot assign attribute on non-namespace object");
  CHECK(render_error("{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}").message() ==
        "chat template line 1: macro 'm' takes not more than 1 argument(s)");
}

TEST_CASE("unknown constructs are errors naming the line, at parse time", "[jinja][errors]") {
  auto parse_error = [](const std::string& src) {
    auto t = Template::parse(src);
    REQUIRE_FALSE(t.ok());
    return t.status();
  };
  CHECK(parse_error("a\nb\n{{ x|foo }}").message() == "chat template line 3: unknown filter 'foo'");
  CHECK(parse_error("a\n{% if x %}\n{{ x is foo }}{% endif %}").message() == "chat template line 3: unknown test 'foo'");
  CHECK(parse_error("a\n\n{% foo %}").message() == "chat template line 3: unknown tag 'foo'");
  CHECK(parse_error("{% do x %}").message() == "chat template line 1: unknown tag 'do'");
  CHECK(parse_error("x\n{% for x in y %}\n{% endif %}").message() ==
        "chat template line 3: unknown tag 'endif' (the 'for' on line 2 expects 'endfor' or 'else')");
  CHECK(parse_error("{% if x %}\n\nabc").message() ==
        "chat template line 3: unexpected end of template: the 'if' on line 1 is not closed");
  CHECK(parse_error("{% break %}").message() == "chat template line 1: 'break' outside of a loop");
  CHECK(parse_error("{{ x").message() == "chat template line 1: unexpected end of template, expected '}}'");
  CHECK(parse_error("{# x").message() == "chat template line 1: missing end of comment tag");
  // Jinja constructs we do not implement are unimplemented, not silently skipped.
  auto st = parse_error("\n{% include 'other.jinja' %}");
  CHECK(st.code() == Code::kUnimplemented);
  CHECK(st.message() == "chat template line 2: tag 'include' is not supported");
  CHECK(parse_error("{{ x|wordwrap }}").message() == "chat template line 1: filter 'wordwrap' is not supported");
  CHECK(parse_error("{% for x in y recursive %}{% endfor %}").code() == Code::kUnimplemented);
  // A case mapping outside our tables fails rather than guessing.
  CHECK(render_error("{{ 'ǅ'|lower }}").code() == Code::kUnimplemented);
}

// ---- limits: a hostile template or hostile messages can neither hang nor exhaust the server ----

TEST_CASE("limits: nesting, steps, built sizes and the variables' nesting are errors, not crashes", "[jinja][limits]") {
  auto has = [](const shoal::Status& s, const std::string& what) {
    INFO(s.message());
    CHECK(s.message().find(what) != std::string::npos);
  };
  // 1,000 nested parentheses, blocks and lists: refused at parse time, the line named.
  has(render_error("{{ " + std::string(1000, '(') + "1" + std::string(1000, ')') + " }}"), "nests more than");
  std::string blocks;
  for (int i = 0; i < 1000; ++i) blocks += "{% if true %}";
  for (int i = 0; i < 1000; ++i) blocks += "{% endif %}";
  has(render_error(blocks), "nests more than");
  has(render_error("{{ " + std::string(1000, '[') + std::string(1000, ']') + " }}"), "nests more than");
  // Found by fuzz_chat_template: 101 unary minuses nested the renderer's recursion past a small
  // stack (the fuzzer's 256 KiB) before the cap was 64.
  has(render_error("{{ l" + std::string(101, '-') + "1 }}"), "nests more than");
  // Left-deep chains are as deep as they are long: 1-1-1..., a.b.c..., x|f|f..., not not ...
  std::string minus = "1", dots = "x", filters = "'a'", nots;
  for (int i = 0; i < 100; ++i) minus += "-1", dots += ".y", filters += "|upper", nots += "not ";
  has(render_error("{{ " + minus + " }}"), "nests more than");
  has(render_error("{{ " + dots + " }}"), "nests more than");
  has(render_error("{{ " + filters + " }}"), "nests more than");
  has(render_error("{{ " + nots + "true }}"), "nests more than");
  // DeepSeek's longest concatenation (the tool call line: 11 terms) is far inside the cap.
  CHECK(render("{{ 'a' + 'b' + 'c' + 'd' + 'e' + 'f' + 'g' + 'h' + 'i' + 'j' + 'k' + 'l' }}") == "abcdefghijkl");
  // What real templates nest (a few levels) still renders.
  CHECK(render("{{ " + std::string(20, '(') + "1" + std::string(20, ')') + " }}") == "1");
  // Loops that would run for hours stop at the step budget (or the deadline, whichever first).
  has(render_error("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"),
      "to render");
  // A step that is a big filter: the deadline stops it (sorting 100,000 items 99,999 times).
  has(render_error("{% set xs = range(99999)|list %}{% for i in range(99999) %}{% if xs|sort|length %}{% endif %}{% endfor %}"),
      "to render");
  // Repetition that would build gigabytes is refused before it allocates.
  has(render_error("{{ 'abc' * 1000000000 }}"), "would build more than");
  has(render_error("{{ [1, 2] * 100000000 }}"), "would build more than");
  CHECK(render("{{ 'ab' * 3 }}") == "ababab");
  // Output past the cap: 16 x 8 MiB through a namespace doubling a string.
  has(render_error("{% set ns = namespace(s='x' * 8000000) %}{% for i in range(20) %}{{ ns.s }}{% endfor %}"),
      "output passed");
  // Variables nested deeper than any real message (a hostile request).
  json deep = 1;
  for (int i = 0; i < 300; ++i) deep = json::array({deep});
  has(render_error("{{ x }}", {{"x", deep}}), "nest more than");
}
