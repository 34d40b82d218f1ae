# private-apt.sh: sourced by fetch-kernel.sh and sanitizer-runtime.sh.
#
# private_apt DIR [SOURCES_DIR] sets apt_opts: the options that make apt-get
# and apt-cache work on arm64 packages with a private state under DIR (its
# package lists, cache and dpkg status), so that the machine's own apt state
# and configuration are never changed and no root is needed. The sources are
# the *.sources files of SOURCES_DIR when given, else the machine's own
# (read only). apt's signature checks stay as they are. The machine's
# apt.conf (a proxy, say) still applies.
private_apt() {
  local dir=$1 sources=${2:-}
  mkdir -p "$dir/lists/partial" "$dir/archives/partial"
  : >"$dir/status"
  apt_opts=(
    -o APT::Architecture=arm64
    -o APT::Architectures::=arm64
    -o Dir::State="$dir"
    -o Dir::State::Lists="$dir/lists"
    -o Dir::State::status="$dir/status"
    -o Dir::Cache="$dir"
    -o Dir::Cache::archives="$dir/archives"
    -o Debug::NoLocking=1
    -o Acquire::Languages=none
    -o APT::Sandbox::User="$(id -un)"
  )
  if [ -n "$sources" ]; then
    apt_opts+=(
      -o Dir::Etc::SourceList=/dev/null
      -o Dir::Etc::SourceParts="$sources"
      -o Dir::Etc::Preferences=/dev/null
      -o Dir::Etc::PreferencesParts="$sources"
    )
  fi
}
