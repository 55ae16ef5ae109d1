mod wedding_props;
