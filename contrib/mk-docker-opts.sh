#!/bin/sh
# flannel's mk-docker-opts.sh, as the release tarball ships it: the same flags (-f -d -i -c -k -m),
# the same output file and exit codes, done by `flanneld mk-docker-opts` (docs/configuration.md).
# It runs the flanneld that sits beside this script (the tarball's layout, /opt/flannel), else the
# one on PATH (the packages install this script in /usr/libexec/flannel and flanneld in /usr/bin).
here=$(dirname "$(readlink -f "$0")")
if [ -x "$here/flanneld" ]; then
  exec "$here/flanneld" mk-docker-opts "$@"
fi
exec flanneld mk-docker-opts "$@"
