#!/bin/sh
# Entrypoint of the zvonok-agi lab's Asterisk image.
#
# pjsip.conf and manager.conf cannot read the environment, and the secrets must not live in
# the repository, so this renders the templates (/usr/share/zvonok/asterisk-templates, from
# asterisk-docker/asterisk/templates/) into /run/zvonok/, which those files #include: every
# ${NAME} in a template becomes the value of the environment variable NAME. Then it runs
# Asterisk (which drops to the asterisk user, see asterisk.conf).
set -eu

templates="${ZVONOK_LAB_TEMPLATES:-/usr/share/zvonok/asterisk-templates}"
out="${ZVONOK_LAB_RENDERED:-/run/zvonok}"

fail() {
  echo "zvonok-lab asterisk: $*" >&2
  exit 1
}

# Defaults for the non-secret settings (docker-compose.yml passes them from .env).
: "${ASTERISK_PUBLIC_ADDRESS:=127.0.0.1}"
: "${SIP_PORT:=5060}"
export ASTERISK_PUBLIC_ADDRESS SIP_PORT

# A value goes into an Asterisk config file as is: no ';' (a comment), no spaces or quotes,
# nothing the renderer below treats specially ('|', '&', '\').
check_secret() {
  eval "value=\${$1:-}"
  [ -n "$value" ] || fail "$1 is not set: put it in asterisk-docker/.env (see .env.example)"
  [ "${#value}" -ge 8 ] || fail "$1 is too short: use at least 8 characters"
  case "$value" in
    *[!A-Za-z0-9._~+=@%^:,!*-]*)
      fail "$1 may hold only letters, digits and . _ ~ + = @ % ^ : , ! * -" ;;
  esac
}
for name in SOFTPHONE1_PASSWORD SOFTPHONE2_PASSWORD ZVONOK_AMI_SECRET; do
  check_secret "$name"
done
case "$ASTERISK_PUBLIC_ADDRESS" in
  '' | *[!A-Za-z0-9.:-]*) fail "ASTERISK_PUBLIC_ADDRESS is not an address or host name" ;;
esac
case "$SIP_PORT" in
  '' | *[!0-9]*) fail "SIP_PORT is not a port number" ;;
esac

mkdir -p "$out"
for template in "$templates"/*.conf; do
  target="$out/$(basename "$template")"
  script=""
  for name in $(grep -o '\${[A-Z0-9_]*}' "$template" | tr -d '${}' | sort -u); do
    eval "value=\${$name:-}"
    [ -n "$value" ] || fail "$name (used by $(basename "$template")) is not set"
    script="$script s|\\\${$name}|$value|g;"
  done
  sed -e "$script" "$template" > "$target.tmp"
  mv "$target.tmp" "$target"
done
# Readable by Asterisk (it runs as the asterisk user), by nobody else.
if getent group asterisk >/dev/null 2>&1; then
  chown -R root:asterisk "$out"
fi
chmod 0750 "$out"
chmod 0640 "$out"/*.conf

exec "$@"
