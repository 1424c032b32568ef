"""The documentation cannot drift from the code it describes:

  test_01: the README's configuration reference has a row for every key the
           parser accepts (refresher/config.cpp's top_keys, credential_keys,
           sink_keys), in the right table, and no row for a key it refuses.
  test_02: the defaults and ranges in those rows are the parser's
           (refresher/config.hpp's defaults, config.cpp's seconds_member bounds).
  test_03: the README's command reference names every command `tokenshm`
           dispatches and every option its parsers and the refresher's accept.
  test_04: docs/OPERATIONS.md names every metric the command and the
           refresher write.
  test_05: every link from the README into docs/OPERATIONS.md, from that
           file to itself and back to the README names a heading that exists.

    test_docs.py REFRESHER TOKENSHM   (the binaries are not needed)
"""

import os
import re
import sys
import unittest

SOURCE_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def source(*parts):
    with open(os.path.join(SOURCE_DIR, *parts)) as f:
        return f.read()


def section(markdown, heading):
    """The text under `## heading` up to the next `## ` heading."""
    m = re.search(r"^## " + re.escape(heading) + r"\n", markdown, re.M)
    assert m, f"no '## {heading}' section"
    end = re.search(r"^## ", markdown[m.end():], re.M)
    return markdown[m.end():m.end() + end.start()] if end else markdown[m.end():]


def key_array(cpp, name):
    """The strings of `constexpr std::array<std::string_view, N> name = {...};`."""
    m = re.search(r"std::array<std::string_view, (\d+)> " + name + r" = \{(.*?)\};", cpp, re.S)
    assert m, f"{name} not found in refresher/config.cpp"
    keys = re.findall(r'"([a-z_]+)"', m.group(2))
    assert len(keys) == int(m.group(1)), f"{name}: read {len(keys)} keys, declared {m.group(1)}"
    return keys


def table_rows(text):
    """{key: row} of the markdown table rows whose first cell is `key`."""
    return {m.group(1): m.group(0)
            for m in re.finditer(r"^\| `([a-z_]+)` \|.*$", text, re.M)}


def function_body(text, name):
    m = re.search(r"\b" + re.escape(name) + r"\(", text)
    assert m, f"{name} not found"
    return text[m.start():text.index("\n}\n", m.end())]


def github_slug(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


class DocsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.readme = source("README.md")
        cls.operations = source("docs", "OPERATIONS.md")
        cls.config_cpp = source("refresher", "config.cpp")
        reference = section(cls.readme, "Configuration reference")
        # The three tables, in order: top level, per credential, per sink.
        parts = re.split(r"^(?:Top level:|Per credential|Per sink)", reference, flags=re.M)
        assert len(parts) == 4, "expected the top-level, credential and sink tables"
        cls.tables = {"top_keys": table_rows(parts[1]), "credential_keys": table_rows(parts[2]),
                      "sink_keys": table_rows(parts[3])}
        # The coordination block's rows, by their last name (`coordination.etcd.lease_ttl_s`).
        cls.coordination = {m.group(1): m.group(0) for m in re.finditer(
            r"^\| `coordination\.(?:etcd\.)?([a-z_]+)`.*$", reference, re.M)}

    def test_01_every_key_has_a_row(self):
        for array, rows in self.tables.items():
            keys = key_array(self.config_cpp, array)
            with self.subTest(array=array):
                self.assertEqual(sorted(set(keys) - set(rows)), [],
                                 f"keys of {array} missing from the README's reference")
                self.assertEqual(sorted(set(rows) - set(keys)), [],
                                 f"rows in the README for keys {array} does not accept")

    def test_02_defaults_and_ranges_are_the_parsers(self):
        hpp = source("refresher", "config.hpp")
        creds = self.tables["credential_keys"]
        for name, value in re.findall(r"std::chrono::seconds (\w+)\{(\d+)\};", hpp):
            key = {"timeout": "timeout_s"}.get(name, name + "_s")
            rows = creds if key in creds else self.coordination
            with self.subTest(key=key):
                self.assertIn(key, rows)
                self.assertEqual(rows[key].split("|")[3].strip(), value, rows[key])
        for key, lo, hi in re.findall(r'seconds_member\(m, "(\w+)", (\d+), ([\d\']+)',
                                      self.config_cpp):
            rows = creds if key in creds else self.coordination
            with self.subTest(key=key):
                self.assertIn(key, rows)
                self.assertIn(f"{lo} to {hi.replace(chr(39), '')}", rows[key])
        top = self.tables["top_keys"]
        m = re.search(r"std::uint32_t max_token_bytes = (\d+);", hpp)
        self.assertEqual(top["max_token_bytes"].split("|")[3].strip(), m.group(1))
        m = re.search(r'std::string state_dir = "([^"]+)";', hpp)
        self.assertIn(f'`"{m.group(1)}"`', top["state_dir"].split("|")[3])
        m = re.search(r'std::string segment = "([^"]+)";', hpp)
        self.assertIn(f'`"{m.group(1)}"`', top["segment"].split("|")[3])

    def test_03_command_reference_names_every_command_and_option(self):
        cli = source("reader", "tokenshm_cli.cpp")
        login = source("reader", "tokenshm_login.cpp")
        refresher = source("refresher", "main.cpp")
        commands = section(self.readme, "Commands")
        dispatched = re.findall(r'cmd == "([a-z]+)"\) return', function_body(cli, "main"))
        self.assertIn("get", dispatched, "could not read the commands from main()")
        parsers = {"get": (cli, "parse_get_args"), "status": (cli, "cmd_status"),
                   "watch": (cli, "parse_watch_args"), "refresh": (cli, "parse_refresh_args"),
                   "login": (login, "parse_login_args"),
                   "tokenshm-refresher": (refresher, "parse_arguments")}
        self.assertEqual(sorted(set(dispatched) - set(parsers) - {"help"}), [],
                         "a command this test does not know: add its parser above")
        for cmd, (text, fn) in parsers.items():
            name = cmd if cmd.startswith("tokenshm-") else "tokenshm " + cmd
            options = set(re.findall(r'a == "(--[-a-z]+)"', function_body(text, fn))) - {"--help"}
            with self.subTest(command=cmd):
                row = re.search(r"^\| `" + re.escape(name) + r"[ `].*$", commands, re.M)
                self.assertIsNotNone(row, f"no row for {name} in the README's command table")
                missing = sorted(o for o in options if not re.search(
                    r"`" + re.escape(o) + r"[ `]", row.group(0)))
                self.assertEqual(missing, [], f"{name}: options missing from the README")
        for code in range(8):
            self.assertTrue(re.search(r"^\| " + str(code) + r" \|", commands, re.M),
                            f"exit code {code} missing from the README's table")

    def test_04_every_metric_is_documented(self):
        families = set()
        for path in (("reader", "prometheus_text.cpp"), ("refresher", "metrics.cpp")):
            families |= set(re.findall(r'family\("([a-z_]+)"', source(*path)))
        self.assertIn("token_version", families, "could not read the metric names")
        metrics = section(self.operations, "Metrics")
        missing = sorted(f for f in families if "tokenshm_" + f not in metrics)
        self.assertEqual(missing, [], "metrics missing from docs/OPERATIONS.md")

    def test_05_links_into_operations_name_real_headings(self):
        slugs = {github_slug(h) for h in re.findall(r"^#{2,3} (.+)$", self.operations, re.M)}
        links = re.findall(r"docs/OPERATIONS\.md#([-\w]+)", self.readme)
        links += re.findall(r"\]\(#([-\w]+)\)", self.operations)
        self.assertGreater(len(links), 5)
        self.assertEqual(sorted(set(links) - slugs), [], "links to headings that do not exist")
        readme_slugs = {github_slug(h) for h in re.findall(r"^#{2,3} (.+)$", self.readme, re.M)}
        back = re.findall(r"README\.md#([-\w]+)", self.operations)
        self.assertEqual(sorted(set(back) - readme_slugs), [], "links to README headings")


def main():
    prog = unittest.main(argv=[sys.argv[0], "-v"], exit=False)
    if prog.result.testsRun == 0:
        print("test_docs: no test ran, which is no pass", file=sys.stderr)
        return 1
    return 0 if prog.result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
