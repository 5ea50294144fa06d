//! `flanneld mk-docker-opts`: docker options from subnet.env, like flannel's mk-docker-opts.sh.
