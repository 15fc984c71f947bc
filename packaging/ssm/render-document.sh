#!/bin/sh
# Writes the ircap SSM Command document for one site on stdout:
# ircap-capture.yaml (or .json) with its site constants filled in. They are
# the collector, the CA and agent certificate/key sources, and the agent's
# SHA-256, path and download URL: fixed in the document, so a caller
# allowed to `SendCommand` it cannot point the agent elsewhere or run
# another binary.
#
#   sh packaging/ssm/render-document.sh --collector https://HOST:PORT \
#       --agent-sha256 HEX [--agent-url s3://B/K|https://...] \
#       [--agent-path /usr/local/bin/ircap-agent] \
#       [--cert-source file|secretsmanager|parameterstore] \
#       [--ca ID] [--agent-cert ID] [--agent-key ID] [--format yaml|json] \
#       > ircap-capture.site.yaml
#
# Each value is checked against the pattern the document used to declare
# for it (no quote, no shell metacharacter); exit 2 on a bad value.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
collector=
sha256=
url=
path=/usr/local/bin/ircap-agent
source=file
ca=/etc/ircap/ca.pem
cert=/etc/ircap/agent.pem
key=/etc/ircap/agent.key
format=yaml

usage() {
    echo "render-document: $1" >&2
    echo "usage: render-document.sh --collector https://HOST:PORT --agent-sha256 HEX [--agent-url URL] [--agent-path PATH] [--cert-source file|secretsmanager|parameterstore] [--ca ID] [--agent-cert ID] [--agent-key ID] [--format yaml|json]" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || usage "$1 needs a value"
    case $1 in
    --collector) collector=$2 ;;
    --agent-sha256) sha256=$2 ;;
    --agent-url) url=$2 ;;
    --agent-path) path=$2 ;;
    --cert-source) source=$2 ;;
    --ca) ca=$2 ;;
    --agent-cert) cert=$2 ;;
    --agent-key) key=$2 ;;
    --format) format=$2 ;;
    *) usage "unknown option $1" ;;
    esac
    shift 2
done

nl='
'
check() {
    # grep matches line by line: a value holding a newline is refused first.
    case $2 in *"$nl"*) usage "$1 holds a newline" ;; esac
    printf '%s' "$2" | grep -Eqx -- "$3" || usage "$1 '$2' is not allowed (must match $3)"
}
check --collector "$collector" 'https://[A-Za-z0-9.-]+(:[0-9]{1,5})?'
check --agent-sha256 "$sha256" '[0-9a-f]{64}'
[ -z "$url" ] || check --agent-url "$url" '(s3|https)://[A-Za-z0-9._~/:%+=@-]{1,2048}'
check --agent-path "$path" '/[A-Za-z0-9/_.+-]{1,1024}'
check --cert-source "$source" 'file|secretsmanager|parameterstore'
check --ca "$ca" '[A-Za-z0-9/_.:+=@-]{1,2048}'
check --agent-cert "$cert" '[A-Za-z0-9/_.:+=@-]{1,2048}'
check --agent-key "$key" '[A-Za-z0-9/_.:+=@-]{1,2048}'
case $format in
yaml | json) ;;
*) usage "--format must be yaml or json" ;;
esac

# None of the values can hold '|' or '&', so they are safe in sed.
out=$(sed \
    -e "s|@IRCAP_COLLECTOR@|$collector|g" \
    -e "s|@IRCAP_AGENT_SHA256@|$sha256|g" \
    -e "s|@IRCAP_AGENT_URL@|$url|g" \
    -e "s|@IRCAP_AGENT_PATH@|$path|g" \
    -e "s|@IRCAP_CERT_SOURCE@|$source|g" \
    -e "s|@IRCAP_CA@|$ca|g" \
    -e "s|@IRCAP_AGENT_CERT@|$cert|g" \
    -e "s|@IRCAP_AGENT_KEY@|$key|g" \
    "$here/ircap-capture.$format")
case $out in
*@IRCAP_*) usage "a site constant of ircap-capture.$format was not filled in" ;;
esac
printf '%s\n' "$out"
