"""The operations files: the Docker lab (asterisk-docker/) and the SIPp scenarios (scripts/sipp/).

There is no Docker engine and no Asterisk here, so the files are checked the way their
readers read them:
- every Asterisk .conf of the lab is parsed with Asterisk's config syntax (sections, templates
  `(!)`, additions `(+)`, `#include`), its includes resolved the way the container sees them:
  the bind mounts of docker-compose.yml, and the secrets the entrypoint renders (it is run for
  real, with made-up secrets). extensions.conf also goes through `asterisklint dialplan-check`;
  pjsip.conf, manager.conf, modules.conf, which asterisklint does not read, get checks of
  their own (object types and options, references, least privilege, modules the dialplan
  needs);
- docker-compose.yml and the Dockerfiles are parsed and every path they name must exist, and
  the addresses, ports and names that several files share must agree;
- the SIPp scenarios are well-formed XML, the inbound one takes its numbers from the
  injection file, and (when SIPp is installed) the runner drives a real SIPp on loopback.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

from asterisk_lint import asterisklint
from zvonok_agi.agi.server import FAILURE_BUDGET
from zvonok_agi.config import SECTIONS, load_settings
from zvonok_agi.health import Heartbeat
from zvonok_agi.systemd import PINGS_PER_PERIOD
from zvonok_agi.watchdog import TOUCH_EVERY, Watchdog

try:
    import yaml
except ImportError:  # pragma: no cover - the test extras bring PyYAML
    yaml = None

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "asterisk-docker"
ASTERISK_DIR = LAB / "asterisk"
ETC = ASTERISK_DIR / "etc"
TEMPLATES = ASTERISK_DIR / "templates"
ENTRYPOINT = ASTERISK_DIR / "entrypoint.sh"
COMPOSE = LAB / "docker-compose.yml"
ENV_EXAMPLE = LAB / ".env.example"
SIPP = ROOT / "scripts" / "sipp"
RUNNER = SIPP / "run"
DIALPLAN = ROOT / "dialplan" / "extensions_zvonok.conf"
OPERATIONS_GUIDE = ROOT / "docs" / "operations.md"

CONFIG_DIR = PurePosixPath("/etc/asterisk")  # Asterisk's config dir: relative includes
SOFTPHONE_NUMBERS = ("79161234567", "79167654321")
MADE_UP_SECRETS = {
    "SOFTPHONE1_PASSWORD": "lab-secret-1",
    "SOFTPHONE2_PASSWORD": "lab-secret-2",
    "ZVONOK_AMI_SECRET": "lab-ami-secret",
}


# ---- Asterisk's config syntax -----------------------------------------------------------------


class ConfError(AssertionError):
    pass


@dataclass
class Section:
    name: str
    where: str
    template: bool = False  # [name](!)
    addition: bool = False  # [name](+)
    bases: tuple[str, ...] = ()  # [name](template1,template2)
    items: list[tuple[str, str]] = field(default_factory=list)

    def get(self, key: str, default: str | None = None) -> str | None:
        values = self.all(key)
        return values[-1] if values else default

    def all(self, key: str) -> list[str]:
        return [value for k, value in self.items if k == key]

    def keys(self) -> set[str]:
        return {k for k, _ in self.items}


_HEADER = re.compile(r"^\[(?P<name>[^\]]+)\](?:\((?P<options>[^)]*)\))?$")
_ITEM = re.compile(r"^(?P<key>[A-Za-z0-9_.\-]+)\s*=>?\s*(?P<value>.*)$")


def _strip_comments(text: str, where: str) -> list[str]:
    """Block comments `;-- ... --;`, then `;` to the end of a line (`\\;` is a literal `;`)."""
    lines = []
    in_block = False
    for raw in text.splitlines():
        line = raw
        out = ""
        while line:
            if in_block:
                end = line.find("--;")
                if end < 0:
                    line = ""
                    continue
                line = line[end + 3 :]
                in_block = False
                continue
            block = line.find(";--")
            single = re.search(r"(?<!\\);", line)
            if block >= 0 and (single is None or block <= single.start()):
                out += line[:block]
                line = line[block + 3 :]
                in_block = True
                continue
            if single is not None:
                out += line[: single.start()]
            else:
                out += line
            line = ""
        lines.append(out.replace("\\;", ";").strip())
    if in_block:
        raise ConfError(f"{where}: unterminated block comment")
    return lines


Resolver = Callable[[str], Path]


def read_conf(path: Path, resolve: Resolver | None = None) -> list[Section]:
    """All sections of a config file as Asterisk reads them, #includes followed by `resolve`
    (None: the file may not #include, as asterisk.conf and modules.conf cannot)."""
    sections: list[Section] = []
    _read_into(path, resolve, sections, depth=0)
    return sections


def _read_into(path: Path, resolve: Resolver | None, sections: list[Section], depth: int) -> None:
    if depth > 10:
        raise ConfError(f"{path}: #include nested too deep")
    if not path.is_file():
        raise ConfError(f"{path}: no such file (Asterisk would not load the module)")
    for lineno, line in enumerate(_strip_comments(path.read_text("utf-8"), str(path)), 1):
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{lineno}"
        if not line:
            continue
        if line.startswith("#"):
            directive, _, argument = line.partition(" ")
            argument = argument.strip().strip('"').strip("<>")
            if directive not in ("#include", "#tryinclude"):
                raise ConfError(f"{where}: {directive} is not used here (#exec needs execincludes)")
            if resolve is None:
                raise ConfError(f"{where}: #include does not work in {path.name}")
            if not argument:
                raise ConfError(f"{where}: {directive} without a file")
            target = resolve(argument)
            if directive == "#tryinclude" and not target.is_file():
                continue
            _read_into(target, resolve, sections, depth + 1)
            continue
        header = _HEADER.match(line)
        if header:
            section = Section(header["name"].strip(), where)
            for option in filter(None, (o.strip() for o in (header["options"] or "").split(","))):
                if option == "!":
                    section.template = True
                elif option == "+":
                    section.addition = True
                else:
                    section.bases += (option,)
            sections.append(section)
            continue
        item = _ITEM.match(line)
        if not item:
            raise ConfError(f"{where}: not a section, a 'key = value' or a directive: {line!r}")
        if not sections:
            raise ConfError(f"{where}: setting outside any section")
        sections[-1].items.append((item["key"], item["value"].strip()))


def effective(sections: list[Section]) -> list[Section]:
    """Additions merged into the section they add to, templates applied, templates dropped."""
    defined: list[Section] = []
    for section in sections:
        if section.addition:
            earlier = [s for s in defined if s.name == section.name]
            if not earlier:
                raise ConfError(f"{section.where}: [{section.name}](+) adds to no section")
            earlier[0].items.extend(section.items)
            continue
        inherited: list[tuple[str, str]] = []
        for base in section.bases:
            found = [s for s in defined if s.name == base]
            if not found:
                raise ConfError(f"{section.where}: template {base!r} is not defined before")
            inherited += found[-1].items
        defined.append(
            Section(
                section.name, section.where, section.template, False, (), inherited + section.items
            )
        )
    return [s for s in defined if not s.template]


def test_the_parser_reads_what_asterisk_reads(tmp_path: Path) -> None:
    main = tmp_path / "main.conf"
    extra = tmp_path / "extra.conf"
    main.write_text(
        "[tpl](!) ; a template\nallow = ulaw\n;-- a block\ncomment --;\n[a](tpl)\nkey => v\\;x\n"
        "#include extra.conf\n",
        "utf-8",
    )
    extra.write_text("[a](+)\nsecret = s\n", "utf-8")
    (section,) = effective(read_conf(main, lambda name: tmp_path / name))
    assert section.name == "a"
    assert section.items == [("allow", "ulaw"), ("key", "v;x"), ("secret", "s")]
    with pytest.raises(ConfError, match="adds to no section"):
        effective(read_conf(extra))
    with pytest.raises(ConfError, match="#include does not work"):
        read_conf(main)
    (tmp_path / "bad.conf").write_text("[s]\nthis is not a setting\n", "utf-8")
    with pytest.raises(ConfError, match="not a section"):
        read_conf(tmp_path / "bad.conf")


# ---- docker-compose.yml and the container's view of the files -----------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    if yaml is None:
        pytest.fail("PyYAML is needed to read docker-compose.yml: add it to the test extras")
    data = yaml.safe_load(COMPOSE.read_text("utf-8"))
    assert isinstance(data, dict) and "services" in data
    return data


_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error}, with `env` standing for .env."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if env.get(name):
            return env[name]
        if op and op.endswith("-"):
            return arg
        raise AssertionError(f"${{{name}}} has no value and no default in {value!r}")

    return _INTERPOLATION.sub(one, value)


def lab_env() -> dict[str, str]:
    """What .env holds for these tests: .env.example with the secrets filled in."""
    env = {}
    for line in ENV_EXAMPLE.read_text("utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    return env | MADE_UP_SECRETS


def service(compose: dict, name: str) -> dict:
    assert name in compose["services"], f"docker-compose.yml has no service {name!r}"
    return compose["services"][name]


def environment(compose: dict, name: str) -> dict[str, str]:
    raw = service(compose, name).get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: interpolate(str(value), lab_env()) for key, value in raw.items()}


def bind_mounts(compose: dict, name: str) -> dict[PurePosixPath, Path]:
    """Container path -> repository path, for the service's bind mounts."""
    mounts = {}
    for volume in service(compose, name).get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith((".", "/")):
            mounts[PurePosixPath(target)] = (LAB / source).resolve()
    return mounts


def ipv4_address(compose: dict, name: str) -> ipaddress.IPv4Address:
    return ipaddress.ip_address(service(compose, name)["networks"]["lab"]["ipv4_address"])


def lab_subnet(compose: dict) -> ipaddress.IPv4Network:
    (config,) = compose["networks"]["lab"]["ipam"]["config"]
    return ipaddress.ip_network(config["subnet"])


def entrypoint_default(variable: str) -> str:
    match = re.search(rf'"\$\{{{variable}:-([^}}]+)\}}"', ENTRYPOINT.read_text("utf-8"))
    assert match, f"entrypoint.sh has no default for {variable}"
    return match[1]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The entrypoint run for real: the secrets files it renders from the templates."""
    out = tmp_path_factory.mktemp("run") / "zvonok"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ZVONOK_LAB_TEMPLATES": str(TEMPLATES),
        "ZVONOK_LAB_RENDERED": str(out),
        **MADE_UP_SECRETS,
    }
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "echo", "asterisk would start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "asterisk would start"
    return out


@pytest.fixture(scope="module")
def resolve(compose: dict, rendered: Path) -> Resolver:
    """How the Asterisk container resolves an #include: relative to /etc/asterisk, through
    the bind mounts of docker-compose.yml and the entrypoint's rendered folder."""
    mounts = bind_mounts(compose, "asterisk")
    mounts[PurePosixPath(entrypoint_default("ZVONOK_LAB_RENDERED"))] = rendered

    def resolver(name: str) -> Path:
        path = PurePosixPath(name)
        if not path.is_absolute():
            path = CONFIG_DIR / path
        for mount in sorted(mounts, key=lambda m: len(m.parts), reverse=True):
            if path == mount or mount in path.parents:
                return mounts[mount].joinpath(*path.relative_to(mount).parts)
        raise ConfError(f"#include {name}: {path} is in none of the container's mounts")

    return resolver


def conf(name: str, resolve: Resolver) -> list[Section]:
    return effective(read_conf(ETC / name, resolve))


def test_the_entrypoint_refuses_missing_or_unsafe_secrets(tmp_path: Path) -> None:
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ZVONOK_LAB_TEMPLATES": str(TEMPLATES),
        "ZVONOK_LAB_RENDERED": str(tmp_path / "out"),
    }
    cases = {
        "is not set": {k: v for k, v in MADE_UP_SECRETS.items() if k != "ZVONOK_AMI_SECRET"},
        "may hold only": MADE_UP_SECRETS | {"SOFTPHONE1_PASSWORD": "semi;colon-comment"},
        "too short": MADE_UP_SECRETS | {"SOFTPHONE2_PASSWORD": "short"},
    }
    for message, secrets in cases.items():
        result = subprocess.run(
            ["sh", str(ENTRYPOINT), "true"],
            env=base | secrets,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode != 0 and message in result.stderr, (message, result.stderr)


def test_the_rendered_secrets_hold_the_environment_and_nothing_else(rendered: Path) -> None:
    templates = sorted(p.name for p in TEMPLATES.glob("*.conf"))
    assert sorted(p.name for p in rendered.glob("*.conf")) == templates
    for path in rendered.glob("*.conf"):
        text = path.read_text("utf-8")
        assert "${" not in text, path.name
        for section in read_conf(path):
            assert section.addition, f"{path.name}: [{section.name}] must add to a section (+)"
    texts = "".join(p.read_text("utf-8") for p in rendered.glob("*.conf"))
    for secret in MADE_UP_SECRETS.values():
        assert secret in texts


# ---- extensions.conf: asterisklint, as the container includes the project's dialplan ---------


def _install_extensions(
    tmp_path: Path, resolve: Resolver, dialplan_text: str | None = None
) -> Path:
    """extensions.conf and what it #includes, copied under tmp_path at their container paths
    (asterisklint follows absolute #include paths as they are written)."""
    root = tmp_path / "container"
    text = (ETC / "extensions.conf").read_text("utf-8")

    def place(match: re.Match[str]) -> str:
        target = PurePosixPath(match["path"])
        if not target.is_absolute():
            target = CONFIG_DIR / target
        copy = root.joinpath(*target.parts[1:])
        copy.parent.mkdir(parents=True, exist_ok=True)
        source = resolve(match["path"])
        content = source.read_text("utf-8")
        if dialplan_text is not None and source == DIALPLAN:
            content = dialplan_text
        copy.write_text(content, "utf-8")
        return f"#include {copy}"

    text = re.sub(r"^#include\s+(?P<path>\S+)\s*$", place, text, flags=re.M)
    installed = root / "etc" / "asterisk" / "extensions.conf"
    installed.parent.mkdir(parents=True, exist_ok=True)
    installed.write_text(text, "utf-8")
    return installed


def test_extensions_conf_includes_the_project_dialplan_from_its_mount(resolve: Resolver) -> None:
    text = (ETC / "extensions.conf").read_text("utf-8")
    includes = re.findall(r"^#include\s+(\S+)", text, re.M)
    assert [resolve(name) for name in includes] == [DIALPLAN]


def test_asterisklint_accepts_the_lab_dialplan(tmp_path: Path, resolve: Resolver) -> None:
    result = asterisklint("dialplan-check", _install_extensions(tmp_path, resolve))
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert output == ""


def test_asterisklint_really_follows_the_include(tmp_path: Path, resolve: Resolver) -> None:
    broken = DIALPLAN.read_text("utf-8") + (
        "\n[zvonok-lint-probe]\nexten => s,1,Goto(zvonok-no-such-context,s,1)\n"
    )
    result = asterisklint("dialplan-check", _install_extensions(tmp_path, resolve, broken))
    assert result.returncode == 1
    assert "E_DP_GOTO_NOCONTEXT" in result.stdout + result.stderr


def dialplan_contexts(resolve: Resolver) -> set[str]:
    sections = read_conf(ETC / "extensions.conf", resolve)
    return {s.name for s in sections} - {"general", "globals"}


def test_the_agi_url_points_at_the_engine_service(compose: dict, resolve: Resolver) -> None:
    (globals_,) = [s for s in read_conf(ETC / "extensions.conf", resolve) if s.name == "globals"]
    url = globals_.get("ZVONOK_AGI_URL")
    engine = environment(compose, "engine")
    assert url == f"agi://engine:{engine['ZVONOK_AGI_PORT']}/inbound"
    assert "engine" in compose["services"]


# ---- pjsip.conf ---------------------------------------------------------------------------------

PJSIP_TYPES = set(
    """global system transport endpoint aor contact auth identify registration domain_alias acl
    phoneprov resource_list inbound-publication outbound-publish asterisk-publication""".split()
)
# Documented options (Asterisk 22 pjsip.conf) of the object types the lab uses. A real option
# missing here can be added; the point is to catch a misspelt one, which makes Asterisk drop
# the whole object.
PJSIP_OPTIONS = {
    kind: set(names.split())
    for kind, names in {
        "global": """type user_agent endpoint_identifier_order default_from_user default_realm
            keep_alive_interval max_forwards debug norefersub""",
        "transport": """type protocol bind local_net external_media_address
            external_signaling_address external_signaling_port async_operations domain tos cos
            allow_reload symmetric_transport method cert_file priv_key_file ca_list_file
            verify_client verify_server""",
        "endpoint": """type transport context disallow allow direct_media rtp_symmetric aors
            auth outbound_auth send_pai send_rpid trust_id_inbound trust_id_outbound force_rport
            rewrite_contact dtmf_mode callerid callerid_privacy callerid_tag from_user
            from_domain identify_by language media_address rtp_timeout rtp_timeout_hold timers
            timers_sess_expires 100rel ice_support media_encryption device_state_busy_at
            allow_subscribe mailboxes inband_progress send_diversion t38_udptl moh_suggest
            direct_media_method connected_line_method tone_zone""",
        "aor": """type contact qualify_frequency qualify_timeout max_contacts remove_existing
            remove_unavailable minimum_expiration default_expiration maximum_expiration
            authenticate_qualify outbound_proxy support_path mailboxes""",
        "auth": "type auth_type username password md5_cred realm nonce_lifetime",
        "identify": "type endpoint match match_header srv_lookups",
    }.items()
}


@pytest.fixture(scope="module")
def pjsip(resolve: Resolver) -> list[Section]:
    return conf("pjsip.conf", resolve)


def objects(sections: list[Section], kind: str) -> dict[str, Section]:
    return {s.name: s for s in sections if s.get("type") == kind}


def test_pjsip_objects_have_a_known_type_and_known_options(pjsip: list[Section]) -> None:
    check_pjsip_types_and_options(pjsip)


def check_pjsip_types_and_options(sections: list[Section]) -> None:
    for section in sections:
        kinds = section.all("type")
        assert len(kinds) == 1, f"{section.where}: [{section.name}] type={kinds}"
        (kind,) = kinds
        assert kind in PJSIP_TYPES, f"{section.where}: [{section.name}] type={kind}"
        unknown = section.keys() - PJSIP_OPTIONS.get(kind, section.keys())
        assert not unknown, f"{section.where}: [{section.name}] unknown {kind} option(s) {unknown}"


def fenced_conf(markdown: Path, first_line: str, tmp_path: Path) -> Path:
    """The guide's fenced block whose first line is `first_line` ("; pjsip.conf"), as a file."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", markdown.read_text("utf-8"), re.M | re.S)
    (block,) = [b for b in blocks if b.startswith(first_line + "\n")]
    path = tmp_path / first_line.removeprefix("; ")
    path.write_text(block, "utf-8")
    return path


@pytest.fixture
def guide_pjsip(tmp_path: Path) -> list[Section]:
    """The production example of docs/operations.md, read as Asterisk would read it."""
    return effective(read_conf(fenced_conf(OPERATIONS_GUIDE, "; pjsip.conf", tmp_path)))


def trunks(sections: list[Section]) -> dict[str, Section]:
    """Endpoints that are trunks: matched by an identify object, or taking calls without auth."""
    endpoints = objects(sections, "endpoint")
    identified = {s.get("endpoint") for s in objects(sections, "identify").values()}
    return {n: e for n, e in endpoints.items() if n in identified or not e.get("auth")}


def check_trunks_are_identified_by_address_only(sections: list[Section]) -> None:
    """Without identify_by, Asterisk also matches an endpoint by the user of From: a request
    from anywhere with From <sip:carrier@...> would enter the carrier's context, no password
    asked. identify_by = ip leaves only the source address."""
    found = trunks(sections)
    assert found, "no trunk found: the check would hold nothing"
    for name, endpoint in found.items():
        assert endpoint.all("identify_by") == ["ip"], f"{endpoint.where}: [{name}] identify_by"
        matched = [i for i in objects(sections, "identify").values() if i.get("endpoint") == name]
        assert matched and all(i.all("match") for i in matched), f"[{name}]: no source address"


def test_the_lab_trunk_takes_calls_only_from_its_address(pjsip: list[Section]) -> None:
    check_trunks_are_identified_by_address_only(pjsip)
    assert set(trunks(pjsip)) == {"carrier"}  # the softphones authenticate


def test_the_guide_trunk_takes_calls_only_from_its_address(guide_pjsip: list[Section]) -> None:
    check_trunks_are_identified_by_address_only(guide_pjsip)


def test_the_trunk_check_catches_a_trunk_matched_by_user_name(tmp_path: Path) -> None:
    conf_file = tmp_path / "pjsip.conf"
    conf_file.write_text(
        "[t]\ntype = endpoint\ncontext = c\n"
        "[t]\ntype = identify\nendpoint = t\nmatch = 192.0.2.1\n",
        "utf-8",
    )
    with pytest.raises(AssertionError, match="identify_by"):
        check_trunks_are_identified_by_address_only(effective(read_conf(conf_file)))


def test_the_guide_pjsip_example_has_known_options(guide_pjsip: list[Section]) -> None:
    check_pjsip_types_and_options(guide_pjsip)


def test_pjsip_references_resolve(pjsip: list[Section], resolve: Resolver) -> None:
    endpoints, aors, auths = (objects(pjsip, k) for k in ("endpoint", "aor", "auth"))
    transports = objects(pjsip, "transport")
    contexts = dialplan_contexts(resolve)
    for name, endpoint in endpoints.items():
        assert endpoint.get("context") in contexts, (name, endpoint.get("context"))
        assert endpoint.get("transport") in transports, name
        for aor in (endpoint.get("aors") or "").split(","):
            assert aor.strip() in aors, (name, aor)
        for auth in filter(None, (endpoint.get("auth") or "").split(",")):
            assert auth.strip() in auths, (name, auth)
        assert endpoint.get("direct_media") == "no", f"{name}: media must stay in Asterisk"
    for name, identify in objects(pjsip, "identify").items():
        assert identify.get("endpoint") in endpoints, name


def test_no_secret_is_in_the_repository_and_every_auth_gets_one(
    pjsip: list[Section], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.conf"
    empty.write_text("", "utf-8")
    for name, secrets in (("pjsip.conf", {"password", "md5_cred"}), ("manager.conf", {"secret"})):
        for section in read_conf(ETC / name, resolve=lambda _: empty):  # the includes left out
            assert not section.keys() & secrets, f"{section.where}: a secret in the repository"
    auths = objects(pjsip, "auth")
    assert auths
    for name, auth in auths.items():
        assert auth.get("username") and auth.get("password"), name


def test_the_carrier_is_the_sipp_container(pjsip: list[Section], compose: dict) -> None:
    carrier_ip = str(ipv4_address(compose, "carrier"))
    (identify,) = [s for s in objects(pjsip, "identify").values() if s.get("endpoint") == "carrier"]
    assert identify.all("match") == [carrier_ip]
    carrier = objects(pjsip, "endpoint")["carrier"]
    assert carrier.get("context") == "zvonok-from-carrier"
    assert carrier.get("trust_id_inbound") == "no"
    (aor,) = [objects(pjsip, "aor")[a] for a in carrier.get("aors").split(",")]
    assert aor.get("contact") == f"sip:{carrier_ip}:5080"  # the runner's uas-* port
    assert '-p "${port:-5080}"' in RUNNER.read_text("utf-8")
    env = environment(compose, "carrier")
    assert env["SIPP_LOCAL_IP"] == carrier_ip
    (transport,) = objects(pjsip, "transport").values()
    port = transport.get("bind").rsplit(":", 1)[1]
    assert env["SIPP_TARGET"] == f"{ipv4_address(compose, 'asterisk')}:{port}"
    # The carrier talks to the container directly: no rewriting to the public address for it.
    local = [ipaddress.ip_network(n) for n in transport.all("local_net")]
    assert any(ipaddress.ip_address(carrier_ip) in net for net in local)


def test_softphones_are_what_the_dialer_dials(pjsip: list[Section], compose: dict) -> None:
    endpoints = objects(pjsip, "endpoint")
    channel = environment(compose, "engine")["ZVONOK_OUTBOUND_CHANNEL"]
    for number in SOFTPHONE_NUMBERS:
        endpoint = endpoints[number]
        tech, _, resource = channel.format(callee=number).partition("/")
        assert (tech, resource) == ("PJSIP", number)
        assert endpoint.get("context") == "lab-softphones"
        assert number in endpoint.get("callerid", "")
        assert endpoint.get("rewrite_contact") == endpoint.get("force_rport") == "yes"
        (aor,) = [objects(pjsip, "aor")[a] for a in endpoint.get("aors").split(",")]
        assert aor.get("contact") is None, "softphones register"
        assert int(aor.get("qualify_frequency", "0")) > 0, "keeps the NAT path open"
        (auth,) = [objects(pjsip, "auth")[a] for a in endpoint.get("auth").split(",")]
        assert auth.get("username") == number


def test_the_transport_speaks_through_the_published_ports(
    pjsip: list[Section], compose: dict
) -> None:
    (transport,) = objects(pjsip, "transport").values()
    assert transport.get("protocol") == "udp"
    assert transport.get("external_media_address") == transport.get("external_signaling_address")
    ports = [interpolate(str(p), lab_env()) for p in service(compose, "asterisk")["ports"]]
    sip = [p for p in ports if p.endswith(":5060/udp")]
    assert len(sip) == 1
    host_port = sip[0].split(":")[-2]
    assert transport.get("external_signaling_port") == host_port
    assert transport.get("bind").endswith(":5060")


# ---- manager.conf -------------------------------------------------------------------------------

# Privilege classes an AMI user may be given; "all" and these powerful ones are refused here.
AMI_CLASSES = set(
    """system call log verbose command agent user config dtmf reporting cdr dialplan originate
    agi cc aoc test security message all""".split()
)
NEVER_GRANTED = {"all", "system", "command", "config"}


@pytest.fixture(scope="module")
def manager(resolve: Resolver) -> list[Section]:
    return conf("manager.conf", resolve)


def test_the_ami_user_has_least_privilege(manager: list[Section], compose: dict) -> None:
    general = [s for s in manager if s.name == "general"]
    assert general and general[0].get("enabled") == "yes"
    users = [s for s in manager if s.name != "general"]
    engine = environment(compose, "engine")
    assert [u.name for u in users] == [engine["ZVONOK_AMI_USERNAME"]]
    (user,) = users
    read = {c.strip() for c in user.get("read", "").split(",") if c.strip()}
    write = {c.strip() for c in user.get("write", "").split(",") if c.strip()}
    assert read <= AMI_CLASSES and write <= AMI_CLASSES
    assert not (read | write) & NEVER_GRANTED, (read, write)
    # What the dialer needs: Originate, and the call events (OriginateResponse, Hangup, ...).
    assert "originate" in write and "call" in read
    assert user.get("secret") == MADE_UP_SECRETS["ZVONOK_AMI_SECRET"]
    assert engine["ZVONOK_AMI_SECRET"] == user.get("secret")


def test_the_ami_user_logs_in_from_the_engine_only(manager: list[Section], compose: dict) -> None:
    (user,) = [s for s in manager if s.name != "general"]
    assert user.all("deny") == ["0.0.0.0/0.0.0.0"], "deny everything, then permit"
    permits = [ipaddress.ip_network(p, strict=True) for p in user.all("permit")]
    # The engine's container only: its fixed address, in the lab network, outside the range
    # Docker hands out to the others.
    engine = ipv4_address(compose, "engine")
    assert permits == [ipaddress.ip_network(f"{engine}/32")], permits
    assert engine in lab_subnet(compose)
    (config,) = compose["networks"]["lab"]["ipam"]["config"]
    assert engine not in ipaddress.ip_network(config["ip_range"])
    # The AMI port is not published to the host.
    published = " ".join(str(p) for p in service(compose, "asterisk").get("ports", []))
    (general,) = [s for s in manager if s.name == "general"]
    assert f":{general.get('port')}" not in published
    assert environment(compose, "engine")["ZVONOK_AMI_PORT"] == general.get("port")
    assert environment(compose, "engine")["ZVONOK_AMI_HOST"] == "asterisk"


# ---- modules.conf, asterisk.conf, logger.conf, rtp.conf -----------------------------------------


@pytest.fixture(scope="module")
def modules() -> set[str]:
    (section,) = read_conf(ETC / "modules.conf")  # #include does not work there
    assert section.name == "modules"
    assert section.get("autoload") == "no", "load only what is needed"
    loaded = {m for k, m in section.items if k == "load"}
    assert not {k for k, _ in section.items} - {"autoload", "load", "noload", "preload", "require"}
    return loaded


def test_modules_conf_loads_what_the_dialplan_uses(
    tmp_path: Path, resolve: Resolver, modules: set[str]
) -> None:
    result = asterisklint("modules-show", _install_extensions(tmp_path, resolve))
    assert result.returncode == 0, result.stdout + result.stderr
    needed = set(re.findall(r"^load => (\S+)$", result.stdout, re.M))
    assert {"res_agi.so", "app_playback.so", "func_dialplan.so"} <= needed  # sanity
    assert needed <= modules, needed - modules


def test_modules_conf_loads_what_the_configuration_uses(
    modules: set[str], pjsip: list[Section]
) -> None:
    always = set(
        """pbx_config.so res_agi.so res_speech.so chan_pjsip.so res_pjsip.so res_pjsip_session.so
        res_pjsip_pubsub.so res_pjproject.so res_sorcery_config.so res_sorcery_memory.so
        res_sorcery_astdb.so res_pjsip_sdp_rtp.so res_pjsip_caller_id.so res_rtp_asterisk.so
        codec_ulaw.so codec_alaw.so format_gsm.so codec_gsm.so bridge_simple.so
        res_clioriginate.so""".split()
    )
    assert always <= modules, always - modules
    if objects(pjsip, "identify"):
        assert "res_pjsip_endpoint_identifier_ip.so" in modules
    if objects(pjsip, "auth"):
        assert {
            "res_pjsip_authenticator_digest.so",
            "res_pjsip_endpoint_identifier_user.so",
        } <= modules
    if any(a.get("contact") is None for a in objects(pjsip, "aor").values()):
        assert "res_pjsip_registrar.so" in modules
    if any(e.get("rewrite_contact") == "yes" for e in objects(pjsip, "endpoint").values()):
        assert "res_pjsip_nat.so" in modules
    assert not any(m.startswith(("chan_sip.", "chan_local.")) for m in modules), "gone in 22"


def test_asterisk_conf_logger_conf_and_rtp_conf(compose: dict) -> None:
    (options,) = read_conf(ETC / "asterisk.conf")  # #include does not work there either
    assert options.name == "options"
    assert options.get("runuser") == "asterisk"
    (general, logfiles) = read_conf(ETC / "logger.conf", resolve=None)
    assert (general.name, logfiles.name) == ("general", "logfiles")
    assert "verbose" in logfiles.get("console", ""), "the route's Verbose() lines"
    (rtp,) = read_conf(ETC / "rtp.conf")
    start, end = int(rtp.get("rtpstart")), int(rtp.get("rtpend"))
    ports = [interpolate(str(p), lab_env()) for p in service(compose, "asterisk")["ports"]]
    assert any(p.endswith(f":{start}-{end}:{start}-{end}/udp") for p in ports), ports


# What Asterisk 22 reads at every start, and logs an ERROR (or a WARNING) about when the file
# is missing, as the lab's first boots did: the core's own files (the core is no module,
# modules.conf cannot leave it out) and those of modules the lab loads (None: the core).
READ_AT_BOOT = {
    "asterisk.conf": None,
    "logger.conf": None,
    "modules.conf": None,
    "stasis.conf": None,
    "ccss.conf": None,
    "cdr.conf": None,
    "cel.conf": None,
    "features.conf": None,
    "indications.conf": None,
    "acl.conf": None,
    "manager.conf": None,
    "udptl.conf": None,
    "extensions.conf": "pbx_config.so",
    "pjproject.conf": "res_pjproject.so",
    "pjsip.conf": "res_pjsip.so",
    "rtp.conf": "res_rtp_asterisk.so",
    "queues.conf": "app_queue.so",
}
# The sections (and their options) the lab's minimal files may hold, from Asterisk 22's
# samples: a misspelt name in them is an ERROR at boot again.
MINIMAL_FILES = {
    "stasis.conf": {"threadpool": {"initial_size", "idle_timeout_sec", "max_size"}},
    "ccss.conf": {"general": {"cc_max_requests"}},
    "cdr.conf": {"general": {"enable", "unanswered", "congestion", "batch"}},
    "cel.conf": {"general": {"enable", "apps", "events", "dateformat"}},
    "features.conf": {"general": {"featuredigittimeout"}},
    "acl.conf": {},
    "udptl.conf": {"general": {"udptlstart", "udptlend"}},
    "pjproject.conf": {
        "log_mappings": {"type", "asterisk_error", "asterisk_warning", "asterisk_debug"}
    },
}
TONES = {"description", "ringcadence", "dial", "busy", "ring", "congestion"}


def test_every_file_asterisk_reads_at_boot_is_there(modules: set[str]) -> None:
    for name, module in READ_AT_BOOT.items():
        if module is None or module in modules:
            assert (ETC / name).is_file(), f"{name}: Asterisk logs an error at boot without it"
    for name, allowed in MINIMAL_FILES.items():
        text = (ETC / name).read_text("utf-8")
        assert text.startswith(";") and name in text.splitlines()[0], f"{name}: say why it exists"
        for section in read_conf(ETC / name):
            assert section.name in allowed, f"{section.where}: [{section.name}]"
            unknown = section.keys() - allowed[section.name]
            assert not unknown, f"{section.where}: [{section.name}] {unknown}"


def test_no_call_records_are_kept_for_backends_the_lab_does_not_load(modules: set[str]) -> None:
    assert not any(m.startswith(("cdr_", "cel_")) for m in modules)
    (general,) = read_conf(ETC / "cdr.conf")
    assert (general.name, general.get("enable")) == ("general", "no")
    assert all(s.get("enable", "no") == "no" for s in read_conf(ETC / "cel.conf"))


def test_the_default_tone_zone_is_defined() -> None:
    sections = {s.name: s for s in read_conf(ETC / "indications.conf")}
    country = sections["general"].get("country")
    assert country in sections, "Asterisk warns: unable to set the default country"
    assert TONES <= sections[country].keys()


def test_every_conf_file_the_project_ships_is_checked() -> None:
    shipped = {
        p.relative_to(ROOT).as_posix()
        for p in ROOT.rglob("*.conf")
        if not {".venv", "var", ".git", "node_modules"} & set(p.relative_to(ROOT).parts)
    }
    checked = (
        {f"asterisk-docker/asterisk/etc/{n}" for n in READ_AT_BOOT}
        | {f"asterisk-docker/asterisk/templates/{p.name}" for p in TEMPLATES.glob("*.conf")}
        | {
            "dialplan/extensions_zvonok.conf",  # also tests/test_dialplan.py
        }
    )
    assert shipped == checked, shipped ^ checked


# ---- docker-compose.yml and the Dockerfiles -----------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int


def read_dockerfile(path: Path) -> list[Instruction]:
    instructions = []
    pending = ""
    start = 0
    for lineno, raw in enumerate(path.read_text("utf-8").splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = lineno
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, arguments = text.partition(" ")
        assert keyword.isupper(), f"{path.name}:{start}: {text!r}"
        instructions.append(Instruction(keyword, arguments.strip(), start))
    assert not pending, f"{path.name}: ends inside a continued line"
    assert instructions and instructions[0].keyword in ("FROM", "ARG"), path.name
    return instructions


def copies(instructions: list[Instruction]) -> Iterator[tuple[list[str], str]]:
    for instruction in instructions:
        if instruction.keyword in ("COPY", "ADD") and "--from=" not in instruction.arguments:
            *sources, destination = shlex.split(instruction.arguments)
            yield sources, destination


def exec_form(instruction: Instruction) -> list[str]:
    value = json.loads(instruction.arguments)
    assert isinstance(value, list), instruction
    return value


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            excluded = not negated
    return excluded


def build(compose: dict, name: str) -> tuple[Path, Path]:
    spec = service(compose, name)["build"]
    if isinstance(spec, str):
        spec = {"context": spec}
    context = (LAB / spec["context"]).resolve()
    dockerfile = context / spec.get("dockerfile", "Dockerfile")
    assert context.is_dir(), context
    assert dockerfile.is_file(), dockerfile
    return context, dockerfile


def test_compose_file_paths_exist(compose: dict) -> None:
    for name, spec in compose["services"].items():
        if "build" in spec:
            build(compose, name)
        else:
            assert "image" in spec, name
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (LAB / source).exists(), f"{name}: {volume}"
            else:
                assert source in compose.get("volumes", {}), f"{name}: named volume {source}"


def test_every_copied_file_exists_and_reaches_the_build(compose: dict) -> None:
    for name in ("asterisk", "engine", "carrier"):
        context, dockerfile = build(compose, name)
        ignore_file = dockerfile.with_name(dockerfile.name + ".dockerignore")
        if not ignore_file.is_file():
            ignore_file = context / ".dockerignore"
        patterns = []
        if ignore_file.is_file():
            patterns = [
                line.strip()
                for line in ignore_file.read_text("utf-8").splitlines()
                if line.strip() and not line.strip().startswith("#")
            ]
        for sources, _ in copies(read_dockerfile(dockerfile)):
            for source in sources:
                path = context / source
                assert path.exists(), f"{dockerfile}: COPY {source}"
                files = (
                    [path]
                    if path.is_file()
                    else [
                        p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                    ]
                )
                for file in files:
                    relative = file.relative_to(context).as_posix()
                    assert not dockerignore_excludes(patterns, relative), f"{name}: {relative}"
        if name == "engine":
            # The context is the repository root: what the engine does not need stays out.
            assert context == ROOT
            for outside in (
                ".venv/bin/python",
                "tests/test_dialplan.py",
                "var/redis/x",
                ".git/HEAD",
            ):
                assert dockerignore_excludes(patterns, outside), outside


def test_the_asterisk_image(compose: dict) -> None:
    _, dockerfile = build(compose, "asterisk")
    instructions = read_dockerfile(dockerfile)
    base = instructions[0].arguments
    assert re.fullmatch(r"alpine:3\.\d+", base), f"a pinned distribution release: {base}"
    runs = " ".join(i.arguments for i in instructions if i.keyword == "RUN")
    assert re.search(r"apk add --no-cache asterisk\b", runs), "Asterisk from the package"
    assert "asterisk-sounds-en" in runs, "the prompts the dialplan plays"
    assert not re.search(r"\b(make|configure|git clone|wget|curl)\b", runs), "no build from source"
    destinations = dict((tuple(s), d) for s, d in copies(instructions))
    assert destinations[("templates/",)].rstrip("/") == entrypoint_default("ZVONOK_LAB_TEMPLATES")
    (entrypoint,) = [i for i in instructions if i.keyword == "ENTRYPOINT"]
    assert exec_form(entrypoint) == [destinations[("entrypoint.sh",)]]
    (cmd,) = [i for i in instructions if i.keyword == "CMD"]
    assert exec_form(cmd)[:2] == ["asterisk", "-f"], "foreground: the container's process"
    assert os.access(ENTRYPOINT, os.X_OK)
    mounts = bind_mounts(compose, "asterisk")
    assert mounts[PurePosixPath("/etc/asterisk")] == ETC
    assert any(volume.endswith(":ro") for volume in service(compose, "asterisk")["volumes"])


def test_the_engine_image_and_service(compose: dict) -> None:
    _, dockerfile = build(compose, "engine")
    instructions = read_dockerfile(dockerfile)
    assert instructions[0].arguments.startswith("python:3.11-slim")
    (cmd,) = [i for i in instructions if i.keyword == "CMD"]
    assert exec_form(cmd) == ["zvonok-agi", "serve"]
    assert any(i.keyword == "USER" and i.arguments != "root" for i in instructions)
    env = environment(compose, "engine")
    for name in env:
        if name.startswith("ZVONOK_"):
            section, _, key = name.removeprefix("ZVONOK_").lower().partition("_")
            assert section in SECTIONS, f"{name}: no settings section {section!r}"
            assert key in {f.name for f in SECTIONS[section]().__dataclass_fields__.values()}, name
    settings = load_settings(None, environ=env)  # the values are valid settings
    assert settings.agi.host == "0.0.0.0"
    # FastAGI has no authentication: only the Asterisk container may open a session, not the
    # rest of the lab network (the host's gateway, the SIPp carrier, Redis).
    allowed = [ipaddress.ip_network(a, strict=False) for a in settings.agi.allow]
    assert allowed == [ipaddress.ip_network(ipv4_address(compose, "asterisk"))]
    assert settings.redis.url.startswith("redis://redis:")
    assert "ports" not in service(compose, "engine"), "FastAGI stays on the lab network"
    workdir = [i.arguments for i in instructions if i.keyword == "WORKDIR"][-1]
    assert bind_mounts(compose, "engine")[PurePosixPath(workdir) / "config"] == ROOT / "config"


def compose_seconds(duration: str) -> float:
    """A compose duration ("2s", "1m30s", "500ms") in seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_the_engine_healthcheck_reads_the_heartbeat_its_watchdog_writes(
    compose: dict, tmp_path: Path
) -> None:
    engine = service(compose, "engine")
    check = engine["healthcheck"]
    command = check["test"]
    assert command[:4] == ["CMD", "python", "-m", "zvonok_agi.healthcheck"]
    path, max_age = command[4], float(command[5])
    settings = load_settings(None, environ=environment(compose, "engine"))
    assert settings.watchdog.enabled and settings.watchdog.heartbeat_file == path
    _, dockerfile = build(compose, "engine")
    workdir = [i.arguments for i in read_dockerfile(dockerfile) if i.keyword == "WORKDIR"][-1]
    assert PurePosixPath(path).is_relative_to(workdir), "where the engine's user may write"
    # A running engine touches it every second: never that stale. A frozen one turns
    # unhealthy within max_age and the retries.
    assert TOUCH_EVERY * 2 <= max_age
    assert max_age + check["retries"] * compose_seconds(check["interval"]) <= 10
    assert engine["restart"] == "unless-stopped", "starts again an engine its watchdog ended"
    beat = tmp_path / "heartbeat"
    beat.touch()
    here = subprocess.run(
        [sys.executable, *command[2:4], str(beat), command[5]],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=30,
        check=False,
    )
    assert here.returncode == 0


def test_the_guide_unit_lets_systemd_watch_the_engine() -> None:
    blocks = re.findall(r"^```ini\n(.*?)^```", OPERATIONS_GUIDE.read_text("utf-8"), re.M | re.S)
    (unit,) = [b for b in blocks if "[Service]" in b]
    section, options = "", {}
    for line in unit.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif line and not line.startswith("#") and section == "[Service]":
            key, _, value = line.partition("=")
            options[key] = value
    assert options["Type"] == "notify" and options["NotifyAccess"] == "main"
    defaults = load_settings(None, environ={})
    watchdog_sec = float(options["WatchdogSec"])
    # systemd ends a stalled engine only after the engine's own watchdog had its chance.
    engine_acts = Watchdog(Heartbeat(), defaults.watchdog.timeout).acts_within
    assert watchdog_sec * (1 - 1 / PINGS_PER_PERIOD) > engine_acts
    assert options["Restart"] == "on-failure"
    assert float(options["TimeoutStopSec"]) > defaults.agi.drain_deadline + FAILURE_BUDGET


def test_redis_keeps_the_history(compose: dict) -> None:
    redis = service(compose, "redis")
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--appendfsync everysec" in command
    assert any(v.split(":")[1] == "/data" for v in redis["volumes"])


def test_fixed_addresses_are_outside_the_dynamic_range(compose: dict) -> None:
    (config,) = compose["networks"]["lab"]["ipam"]["config"]
    subnet, dynamic = (
        ipaddress.ip_network(config["subnet"]),
        ipaddress.ip_network(config["ip_range"]),
    )
    assert dynamic.subnet_of(subnet)
    for name in ("asterisk", "carrier"):
        address = ipv4_address(compose, name)
        assert address in subnet and address not in dynamic, name


def test_the_secrets_come_from_dot_env(compose: dict) -> None:
    text = COMPOSE.read_text("utf-8")
    used = set(_INTERPOLATION_NAMES.findall(text))
    example = lab_env().keys()
    assert used <= example, f".env.example lacks {used - example}"
    templates = "".join(p.read_text("utf-8") for p in TEMPLATES.glob("*.conf"))
    needed = set(re.findall(r"\$\{([A-Z0-9_]+)\}", templates))
    assert needed <= set(environment(compose, "asterisk")), needed
    for secret in MADE_UP_SECRETS:
        assert re.search(rf"^{secret}=$", ENV_EXAMPLE.read_text("utf-8"), re.M), "no default secret"
    assert ".env" in (LAB / ".gitignore").read_text("utf-8").split()


_INTERPOLATION_NAMES = re.compile(r"\$\{([A-Z0-9_]+)")


# ---- SIPp ---------------------------------------------------------------------------------------

SCENARIOS = sorted(SIPP.glob("*.xml"))
UAS = {"uas-answer": "200", "uas-busy": "486", "uas-noanswer": "180", "uas-unavailable": "480"}


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_sipp_scenarios_are_well_formed(path: Path) -> None:
    root = ET.parse(path).getroot()
    assert root.tag == "scenario"
    assert root.find("send") is not None or root.find("recv") is not None


def _invite(path: Path) -> str:
    root = ET.parse(path).getroot()
    first = root[0]
    assert first.tag == "send", "the UAC starts with its INVITE"
    return (first.text or "").strip()


def test_the_inbound_call_takes_caller_and_did_from_the_csv() -> None:
    lines = [line.strip() for line in _invite(SIPP / "inbound_uac.xml").splitlines()]
    assert lines[0].startswith("INVITE sip:[field1]@")
    headers = dict(line.split(":", 1) for line in lines[1 : lines.index("")] if ":" in line)
    assert "<sip:[field0]@" in headers["From"], "the caller number (CALLERID(num))"
    assert "<sip:[field1]@" in headers["To"], "the DID (EXTEN)"
    # The example injection file: SEQUENTIAL, then caller;DID; lines of E.164 digits.
    lines = [
        line
        for line in (SIPP / "inbound.csv").read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] in ("SEQUENTIAL", "RANDOM")
    for line in lines[1:]:
        caller, did, *_ = line.split(";")
        assert re.fullmatch(r"7\d{10}", caller) and re.fullmatch(r"7\d{10}", did), line


def test_the_trunk_side_scenarios_answer_as_named() -> None:
    for command, code in UAS.items():
        path = SIPP / f"uas_{command.removeprefix('uas-')}.xml"
        root = ET.parse(path).getroot()
        first = root[0]
        assert (first.tag, first.get("request")) == ("recv", "INVITE"), path.name
        sent = [
            (e.text or "").strip().splitlines()[0]
            for e in root.iter("send")
            if (e.text or "").strip()
        ]
        assert any(line.startswith(f"SIP/2.0 {code} ") for line in sent), (path.name, sent)
        assert "log message" in path.read_text("utf-8"), "prints the caller ID it was shown"


def test_the_runner(tmp_path: Path) -> None:
    text = RUNNER.read_text("utf-8")
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert os.access(RUNNER, os.X_OK)
    assert subprocess.run(["bash", "-n", str(RUNNER)], check=False).returncode == 0
    help_text = subprocess.run(
        [str(RUNNER), "--help"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    for command in ("inbound", "load", *UAS):
        assert f"  {command} " in help_text, command
    # Without SIPp, a clear message and exit status 2.
    result = subprocess.run(
        [str(RUNNER), "inbound", "--sipp", str(tmp_path / "no-sipp")],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 2 and "SIPp not found" in result.stderr
    bad = subprocess.run(
        [str(RUNNER), "load", "--rate", "fast"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert bad.returncode == 2 and "--rate" in bad.stderr


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp is not installed (sip-tester)")
@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_sipp_loads_each_scenario(path: Path, tmp_path: Path) -> None:
    extra = ["-inf", str(SIPP / "inbound.csv")] if "uac" in path.name else []
    result = subprocess.run(
        [
            "sipp",
            "-sf",
            str(path),
            *extra,
            "-m",
            "0",
            "-nostdin",
            "-p",
            str(_free_udp_port()),
            "-i",
            "127.0.0.1",
            "127.0.0.1:9",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode in (0, 99), result.stdout[-2000:] + result.stderr


@pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp is not installed (sip-tester)")
def test_the_runner_prints_sipps_counts(tmp_path: Path) -> None:
    """A busy trunk side and the inbound calls, both through the runner, on loopback."""
    uas_port, uac_port = _free_udp_port(), _free_udp_port()
    uas = subprocess.Popen(
        [
            str(RUNNER),
            "uas-busy",
            "--calls",
            "3",
            "--port",
            str(uas_port),
            "--out",
            str(tmp_path / "uas"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        uac = subprocess.run(
            [
                str(RUNNER),
                "inbound",
                "--rate",
                "10",
                "--target",
                f"127.0.0.1:{uas_port}",
                "--port",
                str(uac_port),
                "--out",
                str(tmp_path / "uac"),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        uas_output, _ = uas.communicate(timeout=30)
    finally:
        if uas.poll() is None:
            uas.kill()
            uas.wait()
    assert uac.returncode == 1, uac.stdout[-3000:] + uac.stderr  # every call was rejected
    summary = uac.stdout[uac.stdout.index("SIPp summary") :]
    assert re.search(r"calls created:\s+3\n", summary)
    assert re.search(r"successful calls:\s+0\n", summary)
    assert re.search(r"failed calls:\s+3\n", summary)
    assert re.search(r"rejected by PBX:\s+486 x3\n", summary)
    assert uas.returncode == 0, uas_output[-3000:]
    assert (
        "INVITE for callee 74951234567 showing caller ID 79161234567: 486 Busy Here" in uas_output
    )
    assert re.search(r"successful calls:\s+3\n", uas_output)
