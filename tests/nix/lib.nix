# nixpkgs' lib from a lib/ tree (nix-community/nixpkgs.lib's). Its lib.fileset needs
# builtins.readFileType (Nix 2.14); on an older Nix, toSource is stood in for by
# builtins.path over the same files, so a source is still a store path with its context.
path:
let
  lib = import path;
  members = fileset: fileset.standInMembers or [ fileset ];
in
if builtins ? readFileType then
  lib
else
  lib.extend (
    _: prev: {
      fileset = prev.fileset // {
        unions = filesets: { standInMembers = prev.concatMap members filesets; };
        toSource =
          { root, fileset }:
          let
            wanted = map toString (members fileset);
          in
          builtins.path {
            name = "source";
            path = root;
            # A wanted file or directory, what is inside one, or a directory on the way.
            filter =
              file: _:
              prev.any (
                path: file == path || prev.hasPrefix "${path}/" file || prev.hasPrefix "${file}/" path
              ) wanted;
          };
      };
    }
  )
